"""Edit and the queue: Edit sends the active strip's edit, Edit Selected every selected strip's (each
checked by the engine first; refusals listed before anything is sent). Results land above their own
strip as a take stack: the newest shown, the earlier ones muted, none overwritten. A strip with no edit
starts one, or copies another strip's."""

from __future__ import annotations

import bpy

from . import check_ops, jobs, previews, runs, timeline
from .engine_link import EngineError
from .properties import copy_edit, referenced_strip
from .session import EditSession
from .shots import Shot


class VIDEOGRAIN_OT_edit(bpy.types.Operator):
    """Export the strip and its mattes, and start its edit on the engine"""

    bl_idname = "videograin.edit"
    bl_label = "Edit"

    strip: bpy.props.StringProperty(name="Strip", default="", options={"SKIP_SAVE"},
                                    description="The strip to edit (empty: the active strip)")
    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run until the edit is done, failed or cancelled (scripts)")

    def execute(self, context):
        scene = context.scene
        source = jobs.named_or_active(scene, self.strip)
        if source is None:
            return jobs.fail(self, scene.videograin, f"No strip '{self.strip}'." if self.strip else
                             "Select the strip to edit.")
        edit = source.videograin
        problem = jobs.edit_problem(source)
        if problem:
            return jobs.fail(self, edit, problem)
        client = jobs.ready_engine(self, edit, scene.videograin.connection_file, self.wait)
        if client is None:
            return {"CANCELLED"}
        try:
            shot = submit(scene, source, client)
        except EngineError as exc:
            return jobs.fail(self, edit, exc.message)
        except RuntimeError as exc:  # Blender could not render the frames or mattes
            return jobs.fail(self, edit, f"Exporting the frames failed: {exc}")
        runs.launch(scene, shot)
        if self.wait:
            runs.wait_for([shot.key])
            if edit.error:
                self.report({"ERROR"}, edit.error)
                return {"CANCELLED"}
        return {"FINISHED"}


class VIDEOGRAIN_OT_edit_selected(bpy.types.Operator):
    """Queue the edit of every selected strip that has one, on one engine: each is checked first, and
    those the engine would refuse are listed with why before anything is sent"""

    bl_idname = "videograin.edit_selected"
    bl_label = "Edit Selected"

    wait: bpy.props.BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                                 description="Run until every queued edit is done, failed or cancelled (scripts)")

    def execute(self, context):
        scene = context.scene
        vg = scene.videograin
        vg.refused.clear()
        chosen = [s for s in timeline.all_strips_of(scene) if s.select and s.videograin.enabled] \
            if scene.sequence_editor else []
        if not chosen:
            return jobs.fail(self, vg, "Select the strips to edit: only strips with an edit are queued.")
        client = jobs.ready_engine(self, vg, vg.connection_file, self.wait)
        if client is None:
            return {"CANCELLED"}
        ready = []
        try:
            for strip in chosen:
                problem = jobs.edit_problem(strip) or _checked(scene, strip, client)
                if problem:
                    _refuse(vg, strip, problem)
                else:
                    ready.append(strip)
        finally:
            client.close()
        queued = []
        for strip in ready:
            client = jobs.ready_engine(self, vg, vg.connection_file, wait=False)
            if client is None:
                break
            try:
                shot = submit(scene, strip, client)
            except EngineError as exc:
                _refuse(vg, strip, exc.message)
                continue
            except RuntimeError as exc:  # Blender could not render the frames or mattes
                _refuse(vg, strip, f"Exporting the frames failed: {exc}")
                continue
            runs.launch(scene, shot)
            queued.append(shot.key)
        refused = "; ".join(f"'{r.code}': {r.message}" for r in vg.refused)
        vg.status = f"Queued {len(queued)} of {len(chosen)} strips" + (f"; refused {refused}" if refused else "")
        self.report({"WARNING"} if refused else {"INFO"}, vg.status)
        if not queued:
            return {"CANCELLED"}
        if self.wait:
            runs.wait_for(queued)
        return {"FINISHED"}


def _checked(scene, strip, client) -> str:
    """Why the engine would refuse the strip's edit ("" when it would run), from a check of it."""
    try:
        view = check_ops.check_strip(scene, strip, client)
    except EngineError as exc:
        return exc.message
    except RuntimeError as exc:
        return f"Exporting the frames failed: {exc}"
    errors = [finding.message for finding in view.findings if finding.error]
    return "" if view.ok else (errors[0] if errors else view.headline)


def _refuse(vg, strip, reason: str) -> None:
    item = vg.refused.add()
    item.code, item.message, item.error = strip.name, reason, True
    strip.videograin.error = reason


def submit(scene, source, client) -> Shot:
    """Export the strip's job and submit it (`jobs.send`); the shot follows it. Takes `client` over."""
    edit = source.videograin
    key = timeline.own_key(scene, source)
    try:
        folder = jobs.results_folder(scene, source)
        edit.error, edit.status = "", "Exporting frames and mattes"
        previews.drop_preview(key)

        def by_path(settings, scratch):
            session = EditSession(client, folder, edit.keep_partial, scratch)  # removes `scratch` when it ends
            session.submit_paths(settings, edit.attention_maps)
            return session

        def inline(settings, pixels, mattes):
            session = EditSession(client, folder, edit.keep_partial)
            session.submit(settings, pixels, mattes, edit.attention_maps)
            return session

        session = jobs.send(scene, edit, source, jobs.request_of(edit), client, by_path, inline)
    except BaseException:
        client.close()
        raise
    return Shot(scene.name, key, source.name, session, scene.videograin.connection_file, _finish, prompt=edit.prompt)


def own_takes(source) -> list[tuple[int, object]]:
    """(index, strip) of the takes of the strip's edit whose strips lie above it: a duplicate carries its
    original's list of takes, whose strips lie above the original, not above the duplicate."""
    takes = [(index, referenced_strip(take, "strip")) for index, take in enumerate(source.videograin.takes)]
    return [(index, strip) for index, strip in takes if strip is not None and timeline.lies_above(strip, source)]


def _finish(scene, shot: Shot) -> None:
    """The new take above its strip, shown; the strip's earlier takes stay, muted."""
    session = shot.session
    source = runs.strip_of(scene, shot)
    edit = source.videograin
    for _, earlier in own_takes(source):
        earlier.mute = True
    strip = timeline.insert_result_strip(scene, source, session.frame_paths(), f"{source.name} edit")
    take = edit.takes.add()
    take.strip, take.prompt, take.summary = strip.name, shot.prompt, session.message
    if session.summary.get("inversion_cached"):
        take.summary += ", inversion from the cache"
    edit.status, edit.progress = f"Done: '{strip.name}' on channel {strip.channel}, {take.summary}", 100.0
    if session.summary.get("random_weights"):
        edit.status += " (random-weight model: not an edit)"
    folder = session.result_folder
    edit.attention_folder = ""
    if (folder / "attention").is_dir():
        edit.attention_folder = bpy.path.relpath(str(folder)) if bpy.data.filepath else str(folder)
        edit.attention_start = source.frame_final_start
    previews.forget_attention()


class VIDEOGRAIN_OT_take_show(bpy.types.Operator):
    """Show this take of the strip's edit in the picture; the strip's other takes are muted"""

    bl_idname = "videograin.take_show"
    bl_label = "Show Take"

    index: bpy.props.IntProperty(name="Take", default=-1, options={"SKIP_SAVE"})

    def execute(self, context):
        strip = context.scene.sequence_editor.active_strip if context.scene.sequence_editor else None
        takes = dict(own_takes(strip)) if strip is not None else {}
        if self.index not in takes:
            return {"CANCELLED"}
        for index, shown in takes.items():
            shown.mute = index != self.index
        return {"FINISHED"}


class VIDEOGRAIN_OT_edit_new(bpy.types.Operator):
    """Start an edit of the active strip, or copy another strip's edit onto it"""

    bl_idname = "videograin.edit_new"
    bl_label = "New Edit"

    copy_from: bpy.props.StringProperty(name="Copy From", default="", options={"SKIP_SAVE"},
                                        description="A strip whose edit to copy (empty: a new, empty edit)")

    def execute(self, context):
        scene = context.scene
        strip = jobs.named_or_active(scene, "")
        if strip is None:
            return jobs.fail(self, scene.videograin, "Select the strip to edit.")
        if not self.copy_from:
            strip.videograin.enabled = True
            return {"FINISHED"}
        other = timeline.all_strips_of(scene).get(self.copy_from)
        if other is None or not other.videograin.enabled:
            return jobs.fail(self, scene.videograin, f"'{self.copy_from}' has no edit to copy.")
        copy_edit(other.videograin, strip.videograin)
        return {"FINISHED"}


classes = (VIDEOGRAIN_OT_edit, VIDEOGRAIN_OT_edit_selected, VIDEOGRAIN_OT_take_show, VIDEOGRAIN_OT_edit_new)

register, unregister = bpy.utils.register_classes_factory(classes)
