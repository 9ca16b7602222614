"""The exit-policy registry: one name per policy, in configs and in
operating points; other packages' policies; earlier names still load."""

import pickle

import catalogue
import pytest
import spacy
from spacy.util import registry

from spacy_earlyexit.core.policies import FixedDepth, TokenPatience, TokenWindowExit
from spacy_earlyexit.pipeline.exit_policies import known_policies, policy_named
from spacy_earlyexit.pipeline.run_settings import PointTable

from ..conftest import model_config


def test_every_built_in_policy_is_registered_under_its_one_name():
    assert {"full", "fixed_depth", "sentence", "token_window", "token_patience"} <= set(known_policies())
    for name in ("full", "fixed_depth", "sentence", "token_window", "token_patience"):
        registered = registry.exit_policies.get(f"spacy-earlyexit.{name}.v1")
        params = {"full": {}, "fixed_depth": {"layer": 1}, "token_patience": {}}.get(name, {"threshold": 0.1})
        assert registered(**params).name == name == policy_named(name, **params).name


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="token_window"):
        policy_named("tokee", threshold=0.1)


@pytest.mark.parametrize(
    "policy, expected",
    [
        ({"@exit_policies": "spacy-earlyexit.token_patience.v1", "patience": 1}, TokenPatience),
        ({"@exit_policies": "spacy-earlyexit.token_window.v1", "threshold": 0.1, "window": 1}, TokenWindowExit),
        # the names of the first releases
        ({"@misc": "spacy-earlyexit.token_window_exit.v1", "threshold": 0.1, "window": 1}, TokenWindowExit),
        ({"@misc": "spacy-earlyexit.fixed_depth.v1", "layer": 1}, FixedDepth),
    ],
)
def test_configs_name_policies_in_their_registry_and_by_earlier_names(tiny_model_dir, policy, expected):
    nlp = spacy.blank("en")
    component = nlp.add_pipe("earlyexit_ner", config={**model_config(tiny_model_dir), "exit_policy": policy})
    assert type(component.exit_policy) is expected


class _EveryOther(FixedDepth):
    name = "acme.every_other.v1"

    def __init__(self, layer: int = 1) -> None:
        super().__init__(layer)


def test_a_policy_of_another_package_is_named_by_its_registered_name(tiny_model_dir):
    registry.exit_policies.register("acme.every_other.v1", func=_EveryOther)
    try:
        assert "acme.every_other.v1" in known_policies()
        nlp = spacy.blank("en")
        spec = {"policy": "acme.every_other.v1", "layer": 2}
        component = nlp.add_pipe(
            "earlyexit_ner", config={**model_config(tiny_model_dir), "operating_points": {"odd": spec}}
        )
        point = component.point("odd")
        assert isinstance(point.policy, _EveryOther) and point.name == "odd"
        assert component.operating_points.point("odd").to_spec() == spec and point.precision == "auto"
    finally:
        catalogue._remove(("spacy", "exit_policies", "acme.every_other.v1"))


def test_a_point_table_parses_each_spec_once_when_it_is_set():
    table = PointTable({"2x": {"policy": "fixed_depth", "layer": 2}}, widths=(0.5, 1.0), owner="'ner'")
    first = table.point("2x")
    assert table.point("2x") is first  # parsed once
    with pytest.raises(ValueError, match="operating point 'bad' of 'ner'"):
        table["bad"] = {"policy": "fixed_depth"}
    assert "bad" not in table and list(table) == ["2x"]
    table["narrow"] = {"policy": "full", "width": 0.5}
    assert table.point("narrow").width == 0.5
    del table["2x"]
    with pytest.raises(KeyError):
        table.point("2x")
    copy = pickle.loads(pickle.dumps(table))
    assert copy == table and copy.point("narrow").width == 0.5 and copy.widths == (0.5, 1.0)


def test_every_way_of_adding_a_point_parses_it():
    table = PointTable({}, widths=(1.0,), owner="'ner'")
    for add in (
        lambda: table.setdefault("bad", {"policy": "fixed_depth"}),
        lambda: table.update(bad={"policy": "fixed_depth"}),
        lambda: table.__ior__({"bad": {"policy": "fixed_depth"}}),
    ):
        with pytest.raises(ValueError, match="operating point 'bad'"):
            add()
        assert "bad" not in table
    assert table.setdefault("one", {"policy": "fixed_depth", "layer": 1}) == {"policy": "fixed_depth", "layer": 1}
    assert table.point("one").policy.layer == 1
