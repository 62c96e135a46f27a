"""Code versions of the perception stages: bump one when its results change for the same config
(they enter the content-addressed cache keys, see ``tasks/keys.py``)."""

SEGMENT_CODE_VERSION = "seg-1"
LABEL_CODE_VERSION = "label-2"  # 2: top-k label candidates per detection
DEPTH_CODE_VERSION = "depth-1"
ASSEMBLE_CODE_VERSION = "assemble-2"  # 2: box matching rule, fragment-only merging, candidates
