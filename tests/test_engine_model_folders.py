"""Model folders: resolution under a models root, and clear errors for missing or inconsistent models."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.model_profile import load_profile  # noqa: E402
from operators.model_store import MODEL_PATH_ENV, ModelFolderError, resolve_parts  # noqa: E402
from operators.network_builder import load_part_network  # noqa: E402
from operators.segmentation_engine import SegmentationEngine  # noqa: E402
from tests.engine_helpers import make_volume, smooth_image, two_part_models  # noqa: E402


@pytest.fixture()
def models(tmp_path):
    root = tmp_path / "models"
    return root, two_part_models(root)


def test_missing_total_mr_names_every_folder_and_the_fetch_command(tmp_path):
    with pytest.raises(ModelFolderError) as info:
        resolve_parts(load_profile("total_mr"), tmp_path)
    message = str(info.value)
    for dataset in (
        "Dataset850_TotalSegMRI_part1_organs_1088subj",
        "Dataset851_TotalSegMRI_part2_muscles_1088subj",
    ):
        assert (
            f"{dataset}/nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
            in message
        )
    assert "totalseg-mri weights fetch total_mr" in message


def test_nonexistent_models_root_is_reported(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        resolve_parts(load_profile("demo"), tmp_path / "nope")


def test_no_models_root_at_all_is_reported(monkeypatch):
    monkeypatch.delenv(MODEL_PATH_ENV, raising=False)
    with pytest.raises(ModelFolderError, match=f"pass -m MODELS or set {MODEL_PATH_ENV}"):
        resolve_parts(load_profile("demo"), None)


def test_models_root_from_environment(models, monkeypatch):
    root, profile = models
    monkeypatch.setenv(MODEL_PATH_ENV, str(root))
    assert [p.part.dataset for p in resolve_parts(profile, None)] == [
        "Dataset901_TestOrgans",
        "Dataset902_TestMuscles",
    ]


def test_profile_named_subfolder_is_found(tmp_path):
    """A MAP's models/<name>/ layout: -m points at models/, the datasets live in models/<profile name>/."""
    profile = two_part_models(tmp_path / "models" / "test_two_parts")
    parts = resolve_parts(profile, tmp_path / "models")
    assert (
        parts[0].folder
        == tmp_path / "models/test_two_parts/Dataset901_TestOrgans/nnUNetTrainer__nnUNetPlans__3d_fullres"
    )


def test_missing_checkpoint_is_named(models):
    root, profile = models
    checkpoint = (
        root / "Dataset902_TestMuscles/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    )
    checkpoint.unlink()
    with pytest.raises(ModelFolderError, match="incomplete") as info:
        resolve_parts(profile, root)
    missing = str(info.value).split("missing: ")[1].split(". Expected")[0]
    assert missing == str(checkpoint)


def test_class_count_disagreeing_with_profile_is_an_error(models):
    root, profile = models
    path = root / "Dataset901_TestOrgans/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json"
    data = json.loads(path.read_text())
    data["labels"]["extra_structure"] = len(data["labels"])
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="6 foreground classes .* maps 5"):
        resolve_parts(profile, root)


def test_checkpoint_that_does_not_load_is_an_error(models):
    root, profile = models
    checkpoint = (
        root / "Dataset901_TestOrgans/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    )
    checkpoint.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ModelFolderError, match="cannot be loaded"):
        SegmentationEngine(profile, root, device="cpu")


def test_checkpoint_with_other_output_channels_is_an_error(models):
    """Weights of the 3-class muscle model inside the 5-class organ folder: shapes do not fit."""
    root, profile = models
    organs = root / "Dataset901_TestOrgans/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    muscles = (
        root / "Dataset902_TestMuscles/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    )
    shutil.copy(muscles, organs)
    with pytest.raises(ModelFolderError, match="does not fit the network .* 6 output channels"):
        load_part_network(resolve_parts(profile, root)[0])


def test_plans_that_import_foreign_code_are_refused(models):
    root, profile = models
    path = root / "Dataset901_TestOrgans/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json"
    plans = json.loads(path.read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    path.write_text(json.dumps(plans))
    with pytest.raises(ModelFolderError, match="refusing to import 'os.system'"):
        SegmentationEngine(profile, root, device="cpu")


def test_plans_spacing_that_disagrees_with_the_profile_is_an_error(tmp_path):
    root = tmp_path / "models"
    two_part_models(root, spacing=2.0)
    profile = two_part_models(tmp_path / "other")  # same folders, 1.5 mm profile
    with pytest.raises(ModelFolderError, match="plans spacing .* differs from the profile's target spacing"):
        SegmentationEngine(profile, root, device="cpu")


def test_legacy_plans_format_builds_the_same_network(models):
    """Plans from nnU-Net < 2.4 (UNet_class_name ...) give the same network and the same labels."""
    root, profile = models
    volume = make_volume(smooth_image((30, 26, 10), seed=4))
    before = SegmentationEngine(profile, root, device="cpu").segment(volume)
    for dataset in ("Dataset901_TestOrgans", "Dataset902_TestMuscles"):
        path = root / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json"
        plans = json.loads(path.read_text())
        config = plans["configurations"]["3d_fullres"]
        kwargs = config.pop("architecture")["arch_kwargs"]
        config.update(
            {
                "UNet_class_name": "PlainConvUNet",
                "UNet_base_num_features": kwargs["features_per_stage"][0],
                "unet_max_num_features": kwargs["features_per_stage"][-1],
                "n_conv_per_stage_encoder": kwargs["n_conv_per_stage"],
                "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"],
                "conv_kernel_sizes": kwargs["kernel_sizes"],
                "pool_op_kernel_sizes": kwargs["strides"],
            }
        )
        path.write_text(json.dumps(plans))
    after = SegmentationEngine(profile, root, device="cpu").segment(volume)
    assert (before == after).all() and before.any()


def test_residual_encoder_unet_found_under_its_old_module_path():
    """ResEnc plans name ...architectures.residual_unet.ResidualEncoderUNet, which now lives in ...unet."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from operators.network_builder import NetworkConfig, build_network

    config = NetworkConfig(
        patch_size=(16, 16, 16),
        spacing=(1.5, 1.5, 1.5),
        transpose_forward=(0, 1, 2),
        normalization_scheme="ZScoreNormalization",
        use_mask_for_norm=False,
        network_class_name="dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
        arch_kwargs={
            "n_stages": 2,
            "features_per_stage": [4, 8],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 2,
            "strides": [[1, 1, 1], [2, 2, 2]],
            "n_blocks_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        kw_requires_import=("conv_op", "norm_op", "dropout_op", "nonlin"),
    )
    assert isinstance(build_network(config, 3), ResidualEncoderUNet)


def test_renamed_class_in_dataset_json_is_logged_not_fatal(models, caplog):
    root, profile = models
    path = root / "Dataset902_TestMuscles/nnUNetTrainer__nnUNetPlans__3d_fullres/dataset.json"
    data = json.loads(path.read_text())
    data["labels"] = {
        ("erector_spinae_left" if k == "autochthon_left" else k): v for k, v in data["labels"].items()
    }
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="operators.model_store"):
        parts = resolve_parts(profile, root)
    assert len(parts) == 2
    assert "1: 'erector_spinae_left' vs 'autochthon_left'" in caplog.text
