"""Operating points: one class, read from a spec and written back."""

import pytest

from spacy_earlyexit.core.points import OperatingPoint
from spacy_earlyexit.core.policies import FixedDepth, FullDepth, TokenPatience, TokenWindowExit

SPECS = [
    {"policy": "full"},
    {"policy": "fixed_depth", "layer": 2},
    {"policy": "sentence", "threshold": 0.1, "uncertainty": "max_prob"},
    {"policy": "token_window", "window": 1, "threshold": 0.2, "uncertainty": "entropy", "layer_thresholds": [0.2, 0.4]},
    {"policy": "token_patience", "patience": 2, "window": 1},
    {"policy": "fixed_depth", "layer": 1, "width": 0.5, "precision": "int8"},
]


@pytest.mark.parametrize("spec", SPECS)
def test_a_spec_read_and_written_is_the_same_spec(spec):
    point = OperatingPoint.from_spec(spec, name="p", widths=[0.5, 1.0])
    assert point.to_spec() == spec
    again = OperatingPoint.from_spec(point.to_spec())
    assert again.to_spec() == spec and type(again.policy) is type(point.policy)


def test_what_a_spec_leaves_out_takes_the_defaults():
    point = OperatingPoint.from_spec({"policy": "token_window", "threshold": 0.3})
    assert isinstance(point.policy, TokenWindowExit) and point.policy.window == 2
    assert point.width == 1.0 and point.precision is None and point.name is None
    assert point.with_precision("bf16").precision == "bf16"
    assert OperatingPoint.from_spec({"policy": "full", "precision": "fp32"}).with_precision("bf16").precision == "fp32"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"threshold": 0.1}, "no 'policy'"),
        ({"policy": "token_window"}, "does not take"),  # threshold missing
        ({"policy": "fixed_depth", "layer": 1, "depth": 2}, "does not take"),
        ({"policy": "nope"}, "Unknown exit policy"),
        ({"policy": "fixed_depth", "layer": 0}, "layer"),
        ({"policy": "full", "width": 0.3}, "0.3"),
        ({"policy": "full", "precision": "fp8"}, "fp8"),
        (["full"], "must be a dict"),
    ],
)
def test_a_bad_spec_is_refused_with_the_point_named(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        OperatingPoint.from_spec(spec, widths=[0.5, 1.0], what="operating point '2x'")
    assert "operating point '2x'" in str(err.value)


def test_labels_name_the_policy_its_parameters_and_a_narrower_width():
    assert OperatingPoint().label == "full"
    assert OperatingPoint(FixedDepth(3), 0.5).label == "fixed_depth(layer=3)@width=0.5"
    assert OperatingPoint(TokenPatience(2)).label == "token_patience(patience=2,window=0)"
    assert isinstance(OperatingPoint().policy, FullDepth)
