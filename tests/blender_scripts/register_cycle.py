import bpy

from scene_setup import finish, register_addon

addon = register_addon()
assert hasattr(bpy.types.Scene, "videograin") and hasattr(bpy.types.Strip, "videograin")
for name in ("edit", "edit_selected", "edit_new", "take_show", "cancel", "cancel_all", "queue_clear", "check",
             "track_matte", "start_engine", "stop_engine", "check_engine", "region_add", "region_remove", "mask_new"):
    assert hasattr(bpy.ops.videograin, name), name
assert {"VIDEOGRAIN_PT_engine", "VIDEOGRAIN_PT_edit", "VIDEOGRAIN_PT_settings", "VIDEOGRAIN_PT_queue"} <= set(dir(bpy.types))
addon.unregister()
assert not hasattr(bpy.types.Scene, "videograin") and not hasattr(bpy.types.Strip, "videograin")
assert "VIDEOGRAIN_PT_edit" not in dir(bpy.types)
addon.register()  # again, cleanly
addon.unregister()
finish()
