"""expand_pairwise: K DPO rows per APO row, images copied without a decode, teachers named."""

import numpy as np
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from cxr_max.training.pairwise import expand_pairwise


def _rows():
    images = [[PILImage.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8))] for i in range(3)]
    features = Features({"images": List(Image()), "prompt": Value("string"), "chosen": Value("string"),
                         "rejected": List(Value("string")), "rejected_teachers": List(Value("string")),
                         "rejected_weights": List(Value("float32")), "dicom_id": Value("string")})
    return Dataset.from_dict({
        "images": images, "prompt": ["p0", "p1", "p2"], "chosen": ["c0", "c1", "c2"],
        "rejected": [["a", "b"], ["c"], ["d", "e", "f"]], "rejected_teachers": [["ta", "tb"], ["tc"], ["td", "te"]],
        "rejected_weights": [[1.0, 1.0], [1.0], [1.0, 1.0, 1.0]], "dicom_id": ["d0", "d1", "d2"]}, features=features)


def test_every_negative_becomes_one_pair_with_its_row_copied():
    rows = _rows()
    pairs = expand_pairwise(rows)
    assert len(pairs) == 6
    assert pairs["rejected"] == ["a", "b", "c", "d", "e", "f"]
    assert pairs["chosen"] == ["c0", "c0", "c1", "c2", "c2", "c2"]
    assert pairs["dicom_id"] == ["d0", "d0", "d1", "d2", "d2", "d2"]
    # a row with fewer teacher names than negatives names the rest by position
    assert pairs["rejected_teacher"] == ["ta", "tb", "tc", "td", "te", "negative_2"]
    assert "rejected_teachers" not in pairs.column_names and "rejected_weights" not in pairs.column_names
    assert pairs.features["images"] == rows.features["images"] and pairs.features["rejected"] == Value("string")
    for pair, source in zip(pairs, [0, 0, 1, 2, 2, 2]):
        assert np.array_equal(np.asarray(pair["images"][0]), np.asarray(rows[source]["images"][0]))


def test_message_completions_keep_their_feature():
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}],
                               "chosen": [{"role": "assistant", "content": "yes"}],
                               "rejected": [[{"role": "assistant", "content": "no"}],
                                            [{"role": "assistant", "content": "maybe"}]]}])
    pairs = expand_pairwise(rows)
    assert pairs["rejected"] == [[{"role": "assistant", "content": "no"}], [{"role": "assistant", "content": "maybe"}]]
    assert pairs["rejected_teacher"] == ["negative_0", "negative_1"]
