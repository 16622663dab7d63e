"""Exceptions for problems a user can fix; the CLI turns them into one readable line and a non-zero exit."""

from __future__ import annotations


class TotalSegMRIError(Exception):
    """Base class for user-facing errors (bad input, missing models, unwritable output)."""

    exit_code = 2


class InputError(TotalSegMRIError, ValueError):
    """The input folder holds nothing this application can use."""


class NoEligibleSeriesError(InputError):
    """DICOM was found but every series was rejected by the selection policy."""

    exit_code = 3


class VolumeBuildError(TotalSegMRIError, ValueError):
    """A stack of DICOM frames cannot be turned into a 3D volume with trustworthy geometry."""


class RulesError(TotalSegMRIError, ValueError):
    """A series-selection rules file is malformed."""


class OutputError(TotalSegMRIError, OSError):
    """The output folder cannot be written."""
