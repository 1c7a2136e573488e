"""The ``cxr_max`` datasets builder: MIMIC-CXR(-JPG) joined with teacher trajectories.

Configs (one ``datasets`` config each, one spec each in :mod:`cxr_max.builder.specs`):

=============== ======================================================================================
``mimic``        one row per image: ids, split, view, image, report sections, the 14 CheXpert labels
``trajectories`` one row per (image, teacher, task, sample): the canonical trajectory + image and split
``studies``      one row per image with every teacher's trajectory as a list
``sft``          TRL conversational vision-language rows (``images`` + ``messages``), refusals excluded
``apo``          preference rows: prompt, chosen (consensus), list of rejected (teachers), weights
``ms_cxr_t``     MS-CXR-T temporal pairs: previous and current image, progression per finding
=============== ======================================================================================

Splits follow MIMIC-CXR's official split file, named the ``datasets`` way: ``train``,
``validation`` (MIMIC's ``validate``) and ``test``; ``ms_cxr_t`` has a single ``test`` split.
With no ``data_dir`` the embedded synthetic MIMIC-CXR is built once and used (:mod:`cxr_max.sources`
decides). Parsing lives in :mod:`cxr_max.mimic` and :mod:`cxr_max.trajectories`; this package only joins.

Modules, laid out like a ``datasets`` packaged module:

* :mod:`~cxr_max.builder.builder`: the :class:`CxrMax` builder class and :func:`load_dataset`;
* :mod:`~cxr_max.builder.config`: :class:`CxrMaxConfig`, the options every config takes;
* :mod:`~cxr_max.builder.specs`: one :class:`ConfigSpec` per config (features, splits, a shard's tables),
  registered by name in :data:`SPECS`;
* :mod:`~cxr_max.builder.context`: one build's state (:class:`BuildContext`, :class:`Scratch`);
* :mod:`~cxr_max.builder.shards`: the trajectory configs' image-range shards and the spill to disk;
* :mod:`~cxr_max.builder.features`, :mod:`~cxr_max.builder.arrow`: feature pieces and Arrow helpers;
* :mod:`~cxr_max.builder.cache`: the code part of the cache key.

``datasets.load_dataset("cxr_max", ...)`` finds :class:`CxrMax` in this package
(:mod:`cxr_max.registration`); it is the package's only ``datasets`` builder class.
"""

from cxr_max.builder.arrow import message_array
from cxr_max.builder.builder import BUILDER_NAME, BadInputError, CxrMax, load_dataset
from cxr_max.builder.cache import code_digest, loaded_code_digest
from cxr_max.builder.config import (
    FRONTAL_MEANINGS,
    FRONTAL_VARIANTS,
    FRONTAL_VIEWS,
    OFFICIAL_SPLITS,
    TEST_LABEL_SOURCES,
    CxrMaxConfig,
)
from cxr_max.builder.context import BuildContext, Scratch
from cxr_max.builder.shards import IMAGES_PER_SHARD
from cxr_max.builder.specs import (
    CONFIG_NAMES,
    MIMIC_SHARD_ROWS,
    MS_CXR_T_FILE,
    SPECS,
    TRAJECTORY_SHARD_ROWS,
    ConfigSpec,
    features_for,
    spec_for,
)
from cxr_max.mimic.images import image_problem  # the image check (BuildContext.check_images looks it up here)

_message_array = message_array  # the name tests/test_chat_content.py imports

__all__ = [
    "BUILDER_NAME", "CONFIG_NAMES", "FRONTAL_MEANINGS", "FRONTAL_VARIANTS", "FRONTAL_VIEWS", "IMAGES_PER_SHARD",
    "MIMIC_SHARD_ROWS", "MS_CXR_T_FILE", "OFFICIAL_SPLITS", "SPECS", "TEST_LABEL_SOURCES", "TRAJECTORY_SHARD_ROWS",
    "BadInputError", "BuildContext", "ConfigSpec", "CxrMax", "CxrMaxConfig", "Scratch", "code_digest",
    "features_for", "image_problem", "load_dataset", "loaded_code_digest", "message_array", "spec_for",
]
