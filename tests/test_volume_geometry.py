"""Volume geometry against dcm2niix and nibabel, on real MR pixel data in several orientations."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.nicom import dicomwrappers

from operators.dicom_index import scan_folder
from operators.errors import VolumeBuildError
from operators.series_selection import select_series
from operators.volume import LPS_TO_RAS
from operators.volume_builder import build_selected_volumes, build_volume
from tests.conftest import run_dcm2niix
from tests.series_factory import oblique_affine, write_series

ORIENTATIONS = {
    # name: voxel->LPS affine for a 91x109x91 array at 2 mm
    "axial": oblique_affine((2, 2, 2), (0, 0, 0), (-90, -110, -70)),
    "sagittal": np.array([[0, 0, 2, -90], [2, 0, 0, -110], [0, -2, 0, 90], [0, 0, 0, 1]], dtype=float),
    "coronal": np.array([[2, 0, 0, -90], [0, 0, 2, -100], [0, -2, 0, 110], [0, 0, 0, 1]], dtype=float),
    "oblique": oblique_affine((2, 2, 2), (17, -11, 8), (-85, -120, -60)),
}


def _only_volume(folder):
    selection = select_series(scan_folder(folder))
    volumes = build_selected_volumes(selection)
    assert len(volumes) == 1, [(d.stack.stack_id, d.reasons) for x in selection.decisions for d in x.stacks]
    return volumes[0]


def _canonical(img):
    canonical = nib.as_closest_canonical(img)
    return canonical.affine, np.asarray(canonical.get_fdata(), dtype=np.float32)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_affine_and_voxels_match_dcm2niix(tmp_path, colin27_2mm, orientation):
    affine = ORIENTATIONS[orientation]
    write_series(tmp_path / "dicom", colin27_2mm, affine, seed=orientation, rescale=(0.5, -10.0))
    volume = _only_volume(tmp_path / "dicom")

    # Ground truth: the grid the series was written from (slices may come out in reverse order when the
    # slice normal points against the written slice direction; compare in canonical orientation).
    expected = np.round((colin27_2mm + 10.0) / 0.5) * 0.5 - 10.0  # stored as integers after rescale
    truth_affine, truth_data = _canonical(nib.Nifti1Image(expected, LPS_TO_RAS @ affine))
    ours_affine, ours_data = _canonical(volume.to_nifti())
    np.testing.assert_allclose(ours_affine, truth_affine, atol=1e-4)
    np.testing.assert_allclose(ours_data, truth_data, atol=1e-3)
    # Slices are sorted along the normal row x column, whatever order the files came in.
    normal = np.cross(volume.affine_lps[:3, 0], volume.affine_lps[:3, 1])
    assert np.dot(normal, volume.affine_lps[:3, 2]) > 0

    (converted,) = run_dcm2niix(tmp_path / "dicom", tmp_path / "dcm2niix")
    theirs_affine, theirs_data = _canonical(nib.load(converted))
    np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)
    np.testing.assert_allclose(ours_data, theirs_data, atol=1e-3)


def test_philips_enhanced_mr_matches_nibabel_and_dcm2niix(tmp_path, philips_mprage):
    """A real Philips Enhanced MR file with per-frame functional groups (written by others)."""
    volume = _only_volume(philips_mprage)
    assert volume.shape == (256, 256, 176)
    assert {s.frame_number for s in volume.sources} == set(range(1, 177))

    # nibabel's own multi-frame reader orders axes (row, column, slice): swap our first two to compare.
    import pydicom

    wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(philips_mprage))
    nib_affine = wrapper.affine
    ours = volume.affine_lps[:, [1, 0, 2, 3]]
    if np.dot(ours[:3, 2], nib_affine[:3, 2]) < 0:  # slice order may differ: compare the same grid
        ours = ours.copy()
        ours[:3, 3] += ours[:3, 2] * (volume.shape[2] - 1)
        ours[:3, 2] *= -1
    np.testing.assert_allclose(ours, nib_affine, atol=1e-3)

    (converted,) = run_dcm2niix(philips_mprage.parent, tmp_path / "dcm2niix")
    ours_affine, ours_data = _canonical(volume.to_nifti())
    theirs_affine, theirs_data = _canonical(nib.load(converted))
    np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)
    np.testing.assert_allclose(ours_data, theirs_data, rtol=1e-4, atol=1e-2)


def test_non_uniform_spacing_is_resampled_with_a_note(tmp_path, colin27_2mm):
    affine = ORIENTATIONS["axial"]
    z = np.cumsum([0] + [2.0, 2.2] * 45)  # alternating 2.0 / 2.2 mm gaps
    positions = [affine[:3, 3] + np.array([0, 0, dz]) for dz in z]
    write_series(tmp_path, colin27_2mm, affine, seed="uneven", positions=positions)
    volume = _only_volume(tmp_path)
    assert volume.notes and "non-uniform slice spacing" in volume.notes[0]
    assert not volume.slices_match_sources
    assert volume.spacing[2] == pytest.approx(2.1, abs=0.01)  # median gap
    # Slice k sits at z0 + k * spacing; its values interpolate between the acquired neighbours.
    k = 10
    z_k = k * volume.spacing[2]
    below = int(np.searchsorted(z, z_k, side="right") - 1)
    w = (z_k - z[below]) / (z[below + 1] - z[below])
    expected = colin27_2mm[:, :, below] * (1 - w) + colin27_2mm[:, :, below + 1] * w
    np.testing.assert_allclose(volume.array[:, :, k], expected, atol=1.0)


def test_missing_slice_is_rejected_with_the_gap(tmp_path, colin27_2mm):
    affine = ORIENTATIONS["axial"]
    write_series(tmp_path, np.delete(colin27_2mm, 40, axis=2), affine, seed="gap",
                 positions=[affine[:3, 3] + np.array([0, 0, 2.0 * k]) for k in range(91) if k != 40])
    selection = select_series(scan_folder(tmp_path))
    assert build_selected_volumes(selection) == []
    (decision,) = selection.decisions[0].stacks
    assert decision.reasons[-1].code == "volume"
    assert "missing slice(s): a gap of 4.00 mm" in decision.reasons[-1].detail


def test_sheared_stack_is_rejected(tmp_path, colin27_2mm):
    affine = ORIENTATIONS["axial"]
    positions = [affine[:3, 3] + np.array([0.5 * k, 0, 2.0 * k]) for k in range(91)]  # drifts in x
    write_series(tmp_path, colin27_2mm, affine, seed="shear", positions=positions)
    index = scan_folder(tmp_path)
    series = next(iter(index.series.values()))
    with pytest.raises(VolumeBuildError, match="drift"):
        build_volume(series, "1", series.frames)
