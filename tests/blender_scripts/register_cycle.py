import bpy

from scene_setup import finish, register_addon

addon = register_addon()
assert hasattr(bpy.types.Scene, "videograin")
for name in ("edit", "cancel", "start_engine", "stop_engine", "check_engine", "region_add", "region_remove", "mask_new"):
    assert hasattr(bpy.ops.videograin, name), name
assert {"VIDEOGRAIN_PT_engine", "VIDEOGRAIN_PT_edit", "VIDEOGRAIN_PT_settings"} <= set(dir(bpy.types))
bpy.ops.videograin.region_add()
assert len(bpy.context.scene.videograin.regions) == 1
addon.unregister()
assert not hasattr(bpy.types.Scene, "videograin") and "VIDEOGRAIN_PT_edit" not in dir(bpy.types)
addon.register()  # again, cleanly
addon.unregister()
finish()
