"""The built extension zip installs into a fresh Blender user folder, its bundled wheels are installed for
this Blender's Python, and the add-on enables."""

import os
import sys
from pathlib import Path

import bpy

import addon_utils  # on the path once bpy is imported

assert os.environ.get("BLENDER_USER_RESOURCES"), "run with a fresh BLENDER_USER_RESOURCES"
result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
assert result == {"FINISHED"}, result
python = f"python{sys.version_info.major}.{sys.version_info.minor}"
site = Path(os.environ["BLENDER_USER_RESOURCES"], "extensions", ".local", "lib", python, "site-packages")
for name in ("zmq", "msgpack"):
    assert (site / name).is_dir(), f"{name} was not installed from the zip's wheels into {site}"
module = "bl_ext.user_default.videograin"
enabled = {m.module for m in bpy.context.preferences.addons}
assert module in enabled, enabled
assert addon_utils.check(module)[1], "add-on not loaded"
assert hasattr(bpy.ops.videograin, "edit") and hasattr(bpy.types.Scene, "videograin")
engine_link = sys.modules[f"{module}.engine_link"]
assert engine_link.EngineClient.__module__ == f"{module}.protocol.client", engine_link.EngineClient.__module__
# Logs and connection files go to the extension's own user folder, and its preferences exist.
folder = sys.modules[f"{module}.engine_ops"].data_folder()
assert folder.parent.parent.name == "extensions" or "extensions" in folder.parts, folder
assert folder.name == "videograin" and str(folder).startswith(os.environ["BLENDER_USER_RESOURCES"]), folder
assert bpy.context.preferences.addons[module].preferences.media_transfer == "AUTO"
print("OK", flush=True)
os._exit(0)  # bpy 4.5 can hang in its own teardown
