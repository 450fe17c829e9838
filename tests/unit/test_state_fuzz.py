"""Whatever a state file holds (any JSON value, a truncated file, a wrong type in any field),
loading it gives the rollouts or a `StateError` naming the file: never another exception."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.rollout.machine import Action, Rollout, State, Status, Transition
from proxy.rollout.store import FileStore, StateError, encode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)

VALID = encode(
    {
        "r": Rollout(
            "http://c:1#salt",
            1_800_000_000.0,
            Status.PAUSED,
            12.5,
            1_800_000_100.0,
            0.25,
            (
                Transition(
                    Action.SET_SHARE,
                    1_800_000_100.0,
                    "token:ab",
                    State.RAMPING,
                    State.PAUSED,
                    "hold",
                    0.25,
                ),
            ),
        )
    }
)


def load(tmp_path: Path, text: str) -> dict[str, Rollout] | None:
    """The rollouts in a state file holding `text`, or None when it is refused as it should be."""
    path = tmp_path / "state.json"
    path.write_text(text)
    try:
        return asyncio.run(FileStore(path).load())
    except StateError as exc:
        assert str(path) in str(exc)
        return None


def paths(document: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The path of every value inside `document`."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def replaced(document: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "null",
        "0",
        '"state"',
        "{}",
        '{"version": 1, "rollouts": []}',
        '{"version": true, "rollouts": {}}',
        '{"version": 1}',
        '{"version": 1, "rollouts": null}',
    ],
)
def test_documents_of_the_wrong_shape_are_refused(tmp_path, text):
    assert load(tmp_path, text) is None


def test_the_valid_document_loads(tmp_path):
    assert load(tmp_path, json.dumps(VALID)) is not None


def test_every_truncation_is_refused(tmp_path):
    text = json.dumps(VALID)
    for end in range(len(text)):
        assert load(tmp_path, text[:end]) is None, end


settings_ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings_
@given(document=json_values)
def test_any_json_value_is_loaded_or_refused(tmp_path, document):
    load(tmp_path, json.dumps(document))


@settings_
@given(data=st.data(), value=json_values)
def test_any_field_of_any_type_is_loaded_or_refused(tmp_path, data, value):
    path = data.draw(st.sampled_from(paths(VALID)))
    load(tmp_path, json.dumps(replaced(VALID, path, value)))


def test_the_number_of_analyses_round_trips_and_older_files_have_none(tmp_path):
    judged = json.loads(json.dumps(VALID))
    judged["rollouts"]["r"]["judged"] = 3
    loaded = load(tmp_path, json.dumps(judged))
    assert loaded is not None and loaded["r"].judged == 3
    assert encode(loaded)["rollouts"]["r"]["judged"] == 3
    older = json.loads(json.dumps(VALID))
    del older["rollouts"]["r"]["judged"]
    loaded = load(tmp_path, json.dumps(older))
    assert loaded is not None and loaded["r"].judged == 0
    for bad in (-1, 1.5, True, "2", None):
        judged["rollouts"]["r"]["judged"] = bad
        assert load(tmp_path, json.dumps(judged)) is None, bad
