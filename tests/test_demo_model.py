"""The committed demo model: integrity, nnU-Net v2 layout, label map, geometry of its training frame, and
segmentation quality on a held-out phantom with a contrast it never saw in training."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.synthetic import demo_model as dm  # noqa: E402
from app.synthetic import phantom  # noqa: E402
from app.synthetic import train_demo_model as tdm  # noqa: E402
from app.synthetic import training_network as tn  # noqa: E402
from app.synthetic.evaluate_demo_model import ACQUISITIONS, render_case  # noqa: E402
from operators.canonical_orientation import to_closest_canonical  # noqa: E402
from operators.volume import LPS_TO_RAS, Volume  # noqa: E402

MODELS = REPO / "models" / "demo"
FOLDER = dm.model_folder(MODELS)
CHECKPOINT = FOLDER / f"fold_{dm.FOLD}" / dm.CHECKPOINT_NAME


def _json(name: str) -> dict:
    return json.loads((FOLDER / name).read_text())


def test_committed_files_match_sha256sums():
    entries = [
        line.split("  ", 1) for line in (MODELS / "SHA256SUMS").read_text().splitlines() if line.strip()
    ]
    listed = {name: digest for digest, name in entries}
    assert set(listed) == {
        f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/dataset.json",
        f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/plans.json",
        f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/fold_0/checkpoint_final.pth",
    }
    for name, digest in listed.items():
        assert hashlib.sha256((MODELS / name).read_bytes()).hexdigest() == digest, name
    # the README documents the same checkpoint digest next to the training command
    readme = (MODELS / "README.md").read_text()
    assert listed[f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/fold_0/checkpoint_final.pth"] in readme
    assert "python -m app.synthetic.train_demo_model" in readme
    assert CHECKPOINT.stat().st_size < 8 * 1024 * 1024


def test_labels_are_consecutive_totalsegmentator_names_matching_phantom_and_profile():
    dataset = _json("dataset.json")
    assert dataset["channel_names"] == {"0": "MRI"} and dataset["file_ending"] == ".nii.gz"
    expected = [(value, phantom.LABELS[value]) for value in sorted(phantom.LABELS)]
    assert dataset["labels"] == {"background": 0, **{name: i + 1 for i, (_, name) in enumerate(expected)}}
    classes = dm.classes_from_dataset_json(dataset)
    assert [(c.label, c.name) for c in classes] == expected
    profile = json.loads((REPO / "operators" / "profiles" / "demo.json").read_text())
    (part,) = profile["parts"]
    assert (part["dataset"], part["trainer"], part["plans"], part["configuration"], part["fold"]) == (
        dm.DATASET_NAME,
        dm.TRAINER_NAME,
        dm.PLANS_NAME,
        dm.CONFIGURATION,
        dm.FOLD,
    )
    assert {int(k): v for k, v in part["labels"].items()} == {c.index: c.name for c in classes}
    assert {int(k): v for k, v in profile["classes"].items()} == {c.label: c.name for c in classes}


def test_plans_and_checkpoint_have_the_keys_nnunet_reads():
    plans = _json("plans.json")
    config = plans["configurations"]["3d_fullres"]
    assert plans["transpose_forward"] == [0, 1, 2] and plans["image_reader_writer"] == "SimpleITKIO"
    assert config["spacing"] == [3.0, 3.0, 3.0] and config["normalization_schemes"] == ["ZScoreNormalization"]
    assert config["use_mask_for_norm"] == [False]
    assert config["architecture"]["network_class_name"].endswith("unet.PlainConvUNet")
    assert config["architecture"]["arch_kwargs"] == dm.arch_kwargs()  # trained with the architecture the code describes
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert checkpoint["init_args"]["configuration"] == "3d_fullres" and checkpoint["init_args"]["fold"] == 0
    assert checkpoint["init_args"]["plans"] == plans
    assert checkpoint["inference_allowed_mirroring_axes"] is None


def test_checkpoint_loads_into_plainconvunet_from_its_plans():
    plans = _json("plans.json")
    n_classes = len(_json("dataset.json")["labels"])
    network = dm.build_network(plans, n_classes)
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint["network_weights"])  # strict: every key and shape must fit
    network.eval()
    with torch.inference_mode():
        out = network(torch.zeros(1, 1, *config_patch(plans)))
    assert tuple(out.shape) == (1, n_classes, *config_patch(plans))


def config_patch(plans: dict) -> tuple[int, ...]:
    return tuple(plans["configurations"]["3d_fullres"]["patch_size"])


def test_training_grid_is_the_engines_canonical_frame():
    """The training grid (RAS+ voxel axes, SimpleITK [z, y, x] order) is what the engine feeds the network."""
    ph = phantom.TorsoPhantom(7)
    lo, hi = tdm._extent_bounds(ph.extent_lps)
    shape, affine = tdm.canonical_grid(lo, hi, 3.0, np.zeros(3))
    assert np.allclose(affine[:3, :3] @ [1, 0, 0], [-3, 0, 0])  # +i = towards the patient's right (LPS -x)
    training = ph.sample_grid(shape, affine)
    # the same anatomy acquired axially in LPS order, then reoriented by the engine's canonicaliser
    axial = np.diag([3.0, 3.0, 3.0, 1.0])
    axial[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (np.array(shape) - 1) * [1, 1, 0]
    acquired = ph.sample_grid(shape, axial)
    canonical = to_closest_canonical(acquired, LPS_TO_RAS @ axial).array
    assert np.array_equal(canonical, training)
    # RAS+ i increases towards the patient's right: the liver (right) lies at larger i than the spleen (left)
    liver_i = np.argwhere(training == 5)[:, 0].mean()
    spleen_i = np.argwhere(training == 1)[:, 0].mean()
    assert liver_i > spleen_i


@pytest.mark.parametrize("plane", range(len(tdm.ACQUISITION_PLANES)))
def test_acquired_training_image_is_the_engines_resampling_and_its_grid_is_where_the_labels_are(plane):
    """An acquired training volume is resampled as the engine resamples a series (same values), and the grid
    its labels are sampled on is where that image's anatomy is: shifting it by half a voxel along any axis
    fits the image worse."""
    from app.synthetic.acquisition import Acquisition, acquisition_grid
    from operators.resampling import image_to_spacing

    ph = phantom.TorsoPhantom(7)
    lo, hi = tdm._extent_bounds(ph.extent_lps)
    row, col = tdm.ACQUISITION_PLANES[plane]
    shape, affine = acquisition_grid((lo, hi), Acquisition("test", row, col, (2.0, 2.0, 5.0)), 0.0)
    t1 = phantom.contrast("t1", np.random.default_rng(0))
    image, _ = phantom.render(ph, shape, affine, t1, np.random.default_rng(1), bias=0.0, noise=0.0)
    stored = np.round(image * 1000.0).astype(np.float32)
    model, model_affine = tdm.to_model_grid(stored, affine)

    canonical = to_closest_canonical(stored, LPS_TO_RAS @ affine)
    engine, _ = image_to_spacing(canonical.array, canonical.spacing, np.full(3, 3.0), "int32_truncate")
    assert np.array_equal(model, engine)
    assert np.allclose(np.linalg.norm(model_affine[:3, :3], axis=0), 3.0, atol=0.1)

    table = np.asarray(t1.intensities)

    def fit(shift_axis: int, shift: float) -> float:
        shifted = model_affine.copy()
        shifted[:3, 3] += model_affine[:3, shift_axis] * shift
        tissue, _ = ph.classify_grid(model.shape, shifted)
        return float(np.corrcoef(model.ravel(), table[tissue].ravel())[0, 1])

    aligned = fit(0, 0.0)
    assert aligned > 0.9
    for axis in range(3):
        assert fit(axis, -0.5) < aligned and fit(axis, 0.5) < aligned


@pytest.mark.parametrize("margin_probability", [0.0, 1.0])
def test_field_of_view_crops_or_adds_air_beyond_the_body_never_both(monkeypatch, margin_probability):
    """Each side of a training field of view is either cropped into the body or, when not, extended by at
    most MARGIN_MM of air with MARGIN_PROBABILITY: held-out studies show air beyond the body's end."""
    monkeypatch.setattr(tdm, "MARGIN_PROBABILITY", margin_probability)
    lo, hi = tdm._extent_bounds(phantom.TorsoPhantom(7).extent_lps)
    rng = np.random.default_rng(0)
    extended = np.zeros((2, 3), dtype=int)
    for _ in range(300):
        new_lo, new_hi = tdm.field_of_view(lo, hi, rng)
        assert np.all(new_lo < new_hi)
        for side, (edge, body, outward) in enumerate(((new_lo, lo, -1.0), (new_hi, hi, 1.0))):
            beyond = outward * (edge - body)  # > 0: air added; < 0: cropped into the body
            assert np.all(beyond <= tdm.MARGIN_MM)
            extended[side] += beyond > 0
            if margin_probability == 0.0:
                assert np.all(beyond <= 0)
    if margin_probability == 1.0:  # every side extended in most draws (all but the cropped ones)
        assert np.all(extended > 150)


def test_model_label_map_rejects_background_and_empty():
    with pytest.raises(dm.DemoModelError):
        dm.model_label_map({0: "background", 1: "spleen"})
    with pytest.raises(dm.DemoModelError):
        dm.model_label_map({})
    assert [(c.index, c.label) for c in dm.model_label_map({19: "vertebrae", 5: "liver"})] == [
        (1, 5),
        (2, 19),
    ]


def test_curved_contrast_keeps_air_black_and_equal_tissues_equal_but_reorders_others():
    rng = np.random.default_rng(0)
    t1 = phantom.contrast("t1", rng)
    index = phantom.TISSUE_INDEX
    disc_brighter = 0
    for _ in range(40):
        curved = tdm.curved_contrast(t1, rng).intensities
        assert curved[index["air"]] == 0.0
        assert all(0.0 <= v <= 1.0 for v in curved)
        # tissues that share an intensity (all muscles; both kidneys) still do: shape must tell them apart
        assert curved[index["autochthon_left"]] == curved[index["iliopsoas_right"]]
        assert curved[index["kidney_left"]] == curved[index["kidney_right"]]
        disc_brighter += curved[index["intervertebral_discs"]] > curved[index["vertebrae"]]
    # in t1 the disc is darker than the vertebra; the curves make it brighter in a good share of the draws
    assert t1.intensity("intervertebral_discs") < t1.intensity("vertebrae")
    assert 8 <= disc_brighter <= 32


def test_coincident_contrast_makes_some_tissues_iso_intense_with_values_it_already_had():
    rng = np.random.default_rng(0)
    index = phantom.TISSUE_INDEX
    copied = []
    kidney_like_fat = 0
    for _ in range(200):
        random = phantom.contrast("random", rng)
        before = random.intensities
        after = tdm.coincident_contrast(random, rng).intensities
        assert after[index["air"]] == 0.0
        assert set(after) <= set(before)  # every intensity is one the contrast had: only coincidences are new
        copied.append(sum(a != b for a, b in zip(after, before, strict=True)) / (len(before) - 1))
        fats = (after[index["visceral_fat"]], after[index["subcutaneous_fat"]])
        kidney_like_fat += after[index["kidney_left"]] in fats
    # about COINCIDENCE_PROBABILITY of the tissues take another's intensity (a tissue may draw itself)
    assert abs(np.mean(copied) - tdm.COINCIDENCE_PROBABILITY) < 0.05
    # independent random intensities never make the kidney iso-intense with fat; coincidences sometimes do
    assert 5 <= kidney_like_fat <= 60


def test_training_loss_is_cross_entropy_plus_one_hot_soft_dice():
    """The training loss (written so that the compiler fuses the one-hot target away) has the value and the
    gradient of the textbook one-hot formulation: mean cross-entropy + 1 - mean over foreground classes of
    batch soft Dice."""
    from bench.demo_training_step import one_hot_dice_ce

    n = 5
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, n, 6, 7, 8, generator=gen)
    target = torch.randint(0, n - 1, (2, 6, 7, 8), generator=gen)  # class 4 absent: its Dice term still counts

    def reference(x):
        return one_hot_dice_ce(x, target, n)

    results = []
    for fn in (lambda x: tn.dice_ce_loss(x, target, n), reference):
        x = logits.clone().requires_grad_()
        loss = fn(x)
        loss.backward()
        results.append((float(loss.detach()), x.grad))
    (ours, our_grad), (ref, ref_grad) = results
    assert ours == pytest.approx(ref, rel=1e-6)
    assert torch.allclose(our_grad, ref_grad, rtol=1e-5, atol=1e-9)
    # channels-last logits (as the network returns them in training) give the same loss
    channels_last = logits.contiguous(memory_format=torch.channels_last_3d)
    assert float(tn.deep_supervision_loss([channels_last], target, n)) == pytest.approx(ref, rel=1e-6)


def test_training_form_computes_the_networks_function_and_gives_it_back_unchanged():
    """While training, the instance norms are computed in a form inductor compiles well; the network's outputs
    and gradients are nnU-Net's, and after the block the module tree and state_dict are PlainConvUNet's."""
    from operators.model_factory import random_network

    torch.manual_seed(0)
    net = random_network(dm.factory_spec(label_names=tuple(f"c{i}" for i in range(1, 6)))).train()
    net.decoder.deep_supervision = True
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)):
        with torch.no_grad():  # non-trivial affine parameters
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    modules_before = [type(m) for m in net.modules()]
    keys_before = list(net.state_dict())
    x = torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1)) * 50 + 200
    y = torch.randint(0, 6, (2, 16, 32, 32), generator=torch.Generator().manual_seed(2))

    def outputs_and_grads():
        net.zero_grad(set_to_none=True)
        outs = net(x)
        tn.deep_supervision_loss(outs, y, 6).backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in net.parameters()]

    ref_outs, ref_grads = outputs_and_grads()
    with tn.training_form(net):
        forms = [m for m in net.modules() if isinstance(m, tn.InstanceNormForTraining)]
        assert forms and not [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
        assert list(net.state_dict()) == keys_before  # same parameter names even while swapped
        outs, grads = outputs_and_grads()
    for ours, ref in zip(outs, ref_outs, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for ours, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5)
    assert [type(m) for m in net.modules()] == modules_before
    conv_block = net.encoder.stages[0][0].convs[0]
    assert conv_block.norm is conv_block.all_modules[1]  # the shared module is shared again


@pytest.mark.skipif(
    not tdm.bfloat16_is_native(),
    reason="no native bfloat16 on this CPU: training runs in float32 here (training_precision), and oneDNN's "
    "emulated bfloat16 steps take about 40 s each (this test: 690 s on a 2-core Zen 3 EPYC)",
)
def test_bfloat16_training_form_is_finite_repeatable_and_close_to_float32():
    """The training script's bfloat16 convolutions (BFLOAT16_CONVOLUTIONS): the deepest encoder stage stays
    float32 (oneDNN's bfloat16 weight gradient there came back with values up to 1e34 in some calls, so runs
    were neither finite nor repeatable), the loss is the float32 loss within bfloat16 rounding, and two runs
    of Adam steps on both training patch sizes give the same losses and finite, small gradients."""
    from operators.model_factory import random_network

    n = 19
    spec = dm.factory_spec(label_names=tuple(f"c{i}" for i in range(1, n)))
    data = torch.Generator().manual_seed(1)
    batches = []
    for i in range(8):
        patch = tdm.EARLY_PATCH_SIZE if i % 2 else dm.PATCH_SIZE
        x = torch.randn(2, 1, *patch, generator=data)
        x[:, :, : patch[0] // 4] = 0  # air, as at the edge of a field of view
        y = torch.randint(0, n, (2, *patch), generator=data)
        batches.append((x.contiguous(memory_format=torch.channels_last_3d), y))

    def run(bfloat16: bool) -> tuple[list[float], list[float]]:
        torch.manual_seed(0)
        net = random_network(spec).train().to(memory_format=torch.channels_last_3d)
        net.decoder.deep_supervision = True
        modules_before = [type(m) for m in net.modules()]
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses, norms = [], []
        with tn.training_form(net, bfloat16=bfloat16) as trained:
            if bfloat16:
                assert isinstance(net.encoder.stages[-1], tn.Float32)
                assert trained(batches[0][0])[0].dtype == torch.bfloat16
            step_loss = tn.compiled_loss(trained, n, compile_graph=False)
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(x, y)
                loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1e30)))
                optimizer.step()
                losses.append(float(loss))
        assert [type(m) for m in net.modules()] == modules_before
        return losses, norms

    losses, norms = run(bfloat16=True)
    assert run(bfloat16=True) == (losses, norms)
    assert all(np.isfinite(norms)) and max(norms) < 10.0, norms
    float32_losses, float32_norms = run(bfloat16=False)
    assert max(float32_norms) < 10.0
    assert losses[0] == pytest.approx(float32_losses[0], rel=0.01)
    assert losses[-1] < losses[0]  # it trains


def test_training_is_deterministic_and_writes_a_complete_folder(tmp_path):
    # with the compiled network (COMPILE_NETWORK), as the committed weights were trained
    assert tdm.COMPILE_NETWORK
    out_a, out_b = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    for out in (out_a, out_b):
        tdm.train(out, iterations=2, seed=3, threads=2, log_every=1, command="test")
    for name in ("SHA256SUMS",):
        assert (out_a / name).read_text() == (out_b / name).read_text()
    sums = (out_a / "SHA256SUMS").read_text()
    assert (
        hashlib.sha256((dm.model_folder(out_a) / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest()
        in sums
    )
    assert not [p for p in out_a.parent.iterdir() if p.name != "demo"]  # no temporary folder left behind
    # bfloat16 convolutions where this CPU has them natively, float32 where they would be emulated
    readme = (out_a / "README.md").read_text()
    assert ("convolutions in bfloat16" in readme) == tdm.bfloat16_is_native()
    assert ("float32 throughout" in readme) != tdm.bfloat16_is_native()


def test_curriculum_renders_only_its_contrasts_first_and_never_a_held_out_one(tmp_path, monkeypatch):
    drawn: list[str] = []
    curved: list[int] = []  # index into drawn of each render passed through an intensity curve
    real_contrast, real_curve = phantom.contrast, tdm.curved_contrast

    def recording_contrast(name, rng):
        drawn.append(name)
        return real_contrast(name, rng)

    def recording_curve(contrast, rng):
        curved.append(len(drawn) - 1)
        return real_curve(contrast, rng)

    monkeypatch.setattr(phantom, "contrast", recording_contrast)
    monkeypatch.setattr(tdm, "curved_contrast", recording_curve)
    monkeypatch.setattr(tdm, "CURVE_PROBABILITY", 1.0)
    monkeypatch.setattr(tdm, "POOL_SIZE", 2)
    monkeypatch.setattr(tdm, "RENDER_EVERY", 1)
    monkeypatch.setattr(tdm, "COMPILE_NETWORK", False)  # the sampling is the subject; compiling costs ~40 s
    tdm.train(tmp_path / "demo", iterations=20, seed=3, threads=2, log_every=20, command="test")
    # iterations 0..3 are the first 20 %: the 2 pooled volumes plus the renders at iterations 1, 2 and 3
    early, late = drawn[:5], drawn[5:]
    assert len(drawn) == 2 + 19
    assert set(early) == set(tdm.CURRICULUM_CONTRASTS)
    assert set(late) <= set(tdm.TRAIN_CONTRASTS) and len(set(late)) > 1
    assert not set(drawn) & set(tdm.HELDOUT_CONTRASTS)
    # after the curriculum, every realistic contrast goes through a curve (probability 1 here), "random" never
    assert curved == [i for i, name in enumerate(drawn) if i >= 5 and name != "random"]


def test_early_iterations_train_on_the_smaller_patches(tmp_path, monkeypatch):
    sizes: list[tuple[int, ...]] = []
    real_sample = tdm.sample_patch

    def recording_sample(volume, rng, patch):
        sizes.append(tuple(patch))
        return real_sample(volume, rng, patch)

    monkeypatch.setattr(tdm, "sample_patch", recording_sample)
    monkeypatch.setattr(tdm, "EARLY_PATCH_SIZE", (16, 32, 32))
    monkeypatch.setattr(tdm, "EARLY_FRACTION", 0.5)
    monkeypatch.setattr(tdm, "POOL_SIZE", 2)
    monkeypatch.setattr(tdm, "COMPILE_NETWORK", False)
    tdm.train(tmp_path / "demo", iterations=4, seed=3, threads=2, log_every=4, command="test")
    batch = tdm.BATCH_SIZE
    assert sizes == [(16, 32, 32)] * (2 * batch) + [tuple(dm.PATCH_SIZE)] * (2 * batch)


@pytest.mark.slow
def test_nnunet_predictor_loads_the_folder_and_agrees_with_the_engine():
    """nnU-Net 2.8.1's own ``nnUNetPredictor.initialize_from_trained_model_folder`` reads the committed
    folder (plans, dataset.json, checkpoint keys) and, behind TotalSegmentator's resampling, segments a
    held-out phantom the same way the engine does."""
    from bench.reference_tools import dice_per_class, nnunet_reference_segment
    from operators.model_profile import load_profile
    from operators.segmentation_engine import SegmentationEngine

    volume, truth = render_case(phantom, tdm.EVAL_SEED_BASE + 51, "t2", ACQUISITIONS[0])
    ours = SegmentationEngine("demo", MODELS, device="cpu").segment(volume)
    reference = nnunet_reference_segment(volume, load_profile("demo"), MODELS)
    # Voxel-identical to nnU-Net's own predictor. (Accuracy against the phantom's truth: the floor test
    # below and app/synthetic/evaluate_demo_model.py.)
    assert ours.shape == reference.shape == truth.shape
    np.testing.assert_array_equal(ours, reference)
    assert dice_per_class(ours, reference, sorted(phantom.LABELS))


# Per-structure Dice the committed weights reach on one held-out case (seed, contrast and acquisition never
# used in training), minus a margin: a floor against regressions in the engine's geometry (orientation,
# laterality, resampling) or a worse checkpoint. The issue's accuracy target (mean 0.90, every structure 0.80
# over 9 held-out cases) is app/synthetic/evaluate_demo_model.py's; see models/demo/README.md.
# Measured (this case, the 15000-iteration weights of 2026-12-03): mean 0.897; spleen 0.913, kidneys R/L
# 0.872/0.907, gallbladder 0.931, liver 0.950, stomach 0.922, lungs L/R 0.945/0.946, vertebrae 0.799, discs
# 0.788, spinal cord 0.815, heart 0.956, aorta 0.881, vena cava 0.906, autochthon L/R 0.899/0.915, iliopsoas
# L/R 0.891/0.908. Left/right pairs guard laterality. Floors are 0.1 below the measured values.
HELD_OUT_FLOOR = {
    1: 0.81, 2: 0.77, 3: 0.8, 4: 0.83, 5: 0.84, 6: 0.82, 10: 0.84, 11: 0.84, 19: 0.69, 20: 0.68, 21: 0.71,
    22: 0.85, 23: 0.78, 24: 0.8, 46: 0.79, 47: 0.81, 48: 0.79, 49: 0.8,
}  # fmt: skip
HELD_OUT_MEAN_FLOOR = 0.79


@pytest.mark.slow
def test_committed_weights_keep_their_measured_accuracy_on_a_held_out_phantom():
    from app.synthetic.evaluate_demo_model import case_dice
    from operators.segmentation_engine import SegmentationEngine

    volume, truth = render_case(phantom, tdm.EVAL_SEED_BASE + 7, "dixon_opp", ACQUISITIONS[1])
    scores = case_dice(SegmentationEngine("demo", MODELS, device="cpu"), volume, truth)
    assert np.mean(list(scores.values())) >= HELD_OUT_MEAN_FLOOR
    for label, floor in HELD_OUT_FLOOR.items():
        assert scores[label] >= floor, f"{phantom.LABELS[label]}: Dice {scores[label]:.3f} < {floor}"


def _empty_volume(shape, affine) -> Volume:
    """A zero image on a grid, for checks that only need its geometry."""
    return Volume(
        array=np.zeros(shape, np.float32),
        affine_lps=affine,
        study_instance_uid="2.25.1",
        series_instance_uid="2.25.2",
        stack_id="1",
        series_description="",
    )


def test_grid_upper_bound_is_exact_on_the_model_grid_and_below_one_off_it():
    from app.synthetic.evaluate_demo_model import acquisition_grid, grid_upper_bound

    ph = phantom.TorsoPhantom(11)
    lo, hi = tdm._extent_bounds(ph.extent_lps)
    shape, affine = tdm.canonical_grid(lo, hi, 3.0, np.zeros(3))
    truth = ph.sample_grid(shape, affine)
    assert set(grid_upper_bound(_empty_volume(shape, affine), truth, (3.0, 3.0, 3.0)).values()) == {1.0}

    shape, affine = acquisition_grid(ph.extent_lps, ACQUISITIONS[1])  # coronal, 1.4 x 1.4 x 4.5 mm
    truth = ph.sample_grid(shape, affine)
    bound = grid_upper_bound(_empty_volume(shape, affine), truth, (3.0, 3.0, 3.0))
    assert set(bound) == set(np.unique(truth).tolist()) - {0}
    assert all(0.8 < value < 1.0 for value in bound.values())


def test_breakdown_model_grid_is_the_engines_canonical_grid_and_held_out_cases_keep_their_draws():
    from app.synthetic import evaluate_demo_model as ev

    acq = ev.model_grid_acquisition(3.0)
    ph = phantom.TorsoPhantom(11)
    shape, affine = ev.acquisition_grid(ph.extent_lps, acq)
    # RAS+ axes at 3 mm: the engine neither reorients nor resamples it, so a perfect model scores 1.0.
    np.testing.assert_array_equal(affine[:3, :3], np.diag([-3.0, -3.0, 3.0]))
    truth = ph.sample_grid(shape, affine)
    assert set(ev.grid_upper_bound(_empty_volume(shape, affine), truth, (3.0, 3.0, 3.0)).values()) == {1.0}
    # Held-out contrasts keep the random streams of the published figures; the training contrast gets its own.
    streams = [ev._contrast_stream(phantom, name) for name in tdm.HELDOUT_CONTRASTS]
    assert streams == list(range(len(tdm.HELDOUT_CONTRASTS)))
    assert ev._contrast_stream(phantom, ev.BREAKDOWN_TRAINING_CONTRAST) not in streams


def test_training_without_a_cxx_compiler_says_so_before_writing_anything(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    out = tmp_path / "demo"
    assert tdm.main(["--out", str(out), "--iterations", "2"]) == 1
    assert "'no-such-compiler-xyz' is not on PATH" in caplog.text and "--no-compile" in caplog.text
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_bfloat16_is_native_reads_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert tdm.bfloat16_is_native(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not tdm.bfloat16_is_native(cpuinfo)
    assert not tdm.bfloat16_is_native(tmp_path / "missing")


def test_precision_auto_trains_in_float32_where_bfloat16_would_be_emulated(caplog):
    # the committed recipe where the CPU has bfloat16; float32 (with a warning) where oneDNN would emulate it
    assert tdm.BFLOAT16_CONVOLUTIONS
    assert tdm.training_precision("auto", native=True) is True
    assert not caplog.records
    assert tdm.training_precision("auto", native=False) is False
    assert "training the convolutions in float32" in caplog.text
    caplog.clear()
    assert tdm.training_precision("float32", native=True) is False
    assert tdm.training_precision("bfloat16", native=False) is True
    assert "emulates the bfloat16" in caplog.text
    with pytest.raises(tdm.TrainingError, match="unknown precision 'half'"):
        tdm.training_precision("half")


def test_precision_is_on_the_command_line_and_in_the_model_readme(tmp_path, monkeypatch):
    monkeypatch.setattr(tdm, "COMPILE_NETWORK", False)  # the README is the subject; compiling costs ~40 s
    out = tmp_path / "demo"
    assert tdm.main(["--out", str(out), "--iterations", "2", "--precision", "float32", "--no-compile"]) == 0
    readme = (out / "README.md").read_text()
    assert "--precision float32" in readme and "float32 throughout" in readme and "bfloat16" not in readme
    with pytest.raises(SystemExit):
        tdm.main(["--out", str(out), "--precision", "half"])
