"""Where each phrase acts: cross-attention maps per phrase and frame, written as overlays and contact-sheet
rows, more concentrated inside their regions with ST-Layout modulation than without; step previews from
the first edit step."""

from __future__ import annotations

import cv2
import numpy as np

from videograin.engine.config import ModulationConfig
from videograin.engine.inputs.job import load_job
from videograin.engine.inputs.media import list_frames
from videograin.engine.method.layout import label_map
from videograin.engine.runner import edit_clip, write_results


def test_maps_per_phrase_concentrate_inside_their_regions_with_modulation(tiny_pipe, tmp_path):
    from videograin.engine.demo import write_demo_inputs

    # 128² so the maps (latent ÷ 2: 8²) resolve the regions; a constant λ, so every step counts.
    job = load_job(write_demo_inputs(tmp_path / "input", frames=4, size=128, steps=5))
    job.settings.modulation = ModulationConfig(decay=0.0)
    result = edit_clip(job, tiny_pipe, attention_maps=True)
    phrases = ["iron man", "spider man", "cherry blossoms"]
    assert sorted(result.attention_maps) == sorted(phrases)
    labels = label_map(job.masks)  # (F, H, W), 0 = background
    for label, phrase in ((1, "iron man"), (2, "spider man"), (0, "cherry blossoms")):
        modulated, plain = result.attention_maps[phrase]
        assert modulated.shape == plain.shape == (4, 8, 8)
        assert 0 <= modulated.min() and modulated.max() == 1.0

        def outside_share(maps):
            up = np.stack([cv2.resize(m, labels.shape[:0:-1], interpolation=cv2.INTER_LINEAR) for m in maps])
            return up[labels != label].sum() / up.sum()

        assert outside_share(modulated) < 0.85 * outside_share(plain), phrase
    write_results(tmp_path / "out", job, result, random_weights=True, show_plain_maps=True)
    for phrase in phrases:
        overlays = list_frames(tmp_path / "out" / "attention" / phrase.replace(" ", "_"))
        assert len(overlays) == 4 and cv2.imread(str(overlays[0])).shape == (128, 128, 3)
    sheet = cv2.imread(str(tmp_path / "out" / "contact_sheet.png"))
    cell_rows = 2 + 2 * len(phrases)  # source, edit, then plain and modulated per phrase
    # Rows of 160-px cells (square frames) between the banner on top and the heat maps' scale below.
    assert 24 + 20 <= sheet.shape[0] - cell_rows * 160 <= 24 + 20 + 3 * 26


def test_no_maps_unless_asked(demo_job, tiny_pipe):
    assert edit_clip(load_job(demo_job), tiny_pipe).attention_maps is None


def test_the_first_preview_comes_with_the_first_edit_step(demo_job, tiny_pipe):
    job = load_job(demo_job)
    previews = []

    def progress(event):
        if event.phase == "edit":
            previews.append((event.step, event.preview))

    edit_clip(job, tiny_pipe, progress=progress, preview_every=2)
    with_preview = [step for step, preview in previews if preview is not None]
    assert with_preview == [1, 2, 4, 5]  # step 1, every 2nd, and the last of 5
    first = previews[0][1]
    assert first.dtype == np.uint8 and first.shape == (16, 16, 3)  # the 8² latents, doubled: cheap


def test_a_narrow_contact_sheet_wraps_its_banner_and_shows_the_heat_scale():
    """The banner of a sheet narrower than its text wraps instead of running off the edge; with attention
    rows the sheet ends with the heat maps' colour scale (blue low, red high) and what it measures."""
    from videograin.engine.inputs.media import contact_sheet
    from videograin.engine.runner import RANDOM_WEIGHTS_BANNER

    frames = np.full((1, 64, 64, 3), 90, np.uint8)
    sheet = contact_sheet([("source", frames)], cell=128, banner=RANDOM_WEIGHTS_BANNER)
    banner = sheet[:-128]
    assert sheet.shape[1] == 128 and banner.shape[0] > 24  # more than one line
    assert not (banner[:, -4:] > 200).all(-1).any(), "the banner's text runs off the sheet's edge"
    legended = contact_sheet([("source", frames)], cell=128, heat_legend=True)
    scale = legended[128 + 10]  # the colour bar's middle row, under the frames
    assert scale[8, 2] > 3 * scale[8, 0] and scale[-8, 0] > 3 * scale[-8, 2]  # blue at 0, red at the peak
    assert legended.shape[0] > 128 + 20 + 18  # the bar, then its words
