"""Rendering: the JSON schema (constant, docs and output agree) and the text layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from midaskit.checkpoint.types import TensorMeta as M
from midaskit.doctor import JSON_SCHEMA, Kind, apply_fixes, diagnose, plan_fixes
from midaskit.doctor.contents import Contents, unsafe_global_finding
from midaskit.doctor.demo_models import TinyNet
from midaskit.doctor.keytree import group_by_depth
from midaskit.doctor.render import (
    DOCTOR_FIELDS,
    DOCTOR_SCHEMA,
    FINDING_FIELDS,
    FIX_FIELDS,
    INSPECT_FIELDS,
    RECORD_FIELDS,
    contents_to_dict,
    render_contents,
    render_report,
    report_to_dict,
)

DOCS = Path(__file__).parents[1] / "docs" / "doctor-json.md"


def check_fields(obj: dict, spec: dict) -> None:
    assert set(obj) == set(spec), set(obj) ^ set(spec)
    for name, kind in spec.items():
        assert isinstance(obj[name], kind), (name, obj[name])


def validate_doctor_json(doc: dict) -> None:
    """Everything ``midaskit doctor --json`` promises in ``docs/doctor-json.md``."""
    check_fields(doc, DOCTOR_FIELDS)
    assert doc["schema"] == DOCTOR_SCHEMA
    assert doc["verdict"] in ("loads as is", "loads after safe fixes", "needs a decision",
                              "incompatible")
    for f in doc["findings"]:
        check_fields(f, FINDING_FIELDS)
        assert f["kind"] in Kind.ALL and f["severity"] in ("error", "decision", "fix", "info")
        assert all(0 <= i < len(doc["fixes"]) for i in f["fixes"])
    for fix in doc["fixes"]:
        check_fields(fix, FIX_FIELDS)
    for record in doc["applied"]:
        check_fields(record, RECORD_FIELDS)
    assert set(doc["plan"]) == {"verdict", "exit_code", "allowed", "blocked"}
    assert doc["exit_code"] == doc["plan"]["exit_code"]


def messy_report():
    """DataParallel + fp16 + 1000 classes + an extra head: every severity at once."""
    sd = {f"module.{k}": M(v.shape, "float16" if v.is_floating_point() else "int64")
          for k, v in TinyNet(num_classes=1000).state_dict().items()}
    sd["module.aux.weight"] = M((3, 3), "float16")
    return diagnose(sd, TinyNet(), name="messy.pt")


def test_docs_hold_the_schema_constant_verbatim():
    assert JSON_SCHEMA.strip() in DOCS.read_text()


def test_docs_example_follows_the_schema():
    example = re.search(r"```json\n(.*?)\n```", DOCS.read_text(), re.S).group(1)
    validate_doctor_json(json.loads(example))


@pytest.mark.parametrize("spec", [DOCTOR_FIELDS, FINDING_FIELDS, FIX_FIELDS, RECORD_FIELDS,
                                  INSPECT_FIELDS])
def test_every_field_is_documented(spec):
    for name in spec:
        assert f'`"{name}"`' in JSON_SCHEMA, name


def test_every_finding_kind_is_documented():
    documented = re.search(r'`"kind"` \(string\): (.*?)\n- ', JSON_SCHEMA, re.S).group(1)
    assert all(f"`{kind}`" in documented for kind in Kind.ALL)


def test_report_json_follows_the_schema_and_round_trips():
    report = messy_report()
    doc = json.loads(json.dumps(report_to_dict(report)))
    validate_doctor_json(doc)
    assert doc["verdict"] == "incompatible" and doc["exit_code"] == 2
    floats = sum(v.numel() for v in TinyNet(num_classes=1000).state_dict().values()
                 if v.is_floating_point())
    assert doc["checkpoint"] == {"name": "messy.pt", "tensors": 17, "params": floats + 9,
                                 "container": []}
    severities = [f["severity"] for f in doc["findings"]]
    assert severities == ["error", "decision", "fix", "fix"]
    prefix = next(f for f in doc["findings"] if f["kind"] == "prefix")
    assert doc["fixes"][prefix["fixes"][0]]["params"] == {"prefix": "module."}
    runs = {f["fix"]: f["runs"] for f in doc["fixes"]}
    assert runs == {"StripPrefix": True, "DropKeys": False, "CastDtype": True}
    assert doc["plan"]["blocked"] == ["drop-unexpected"]


def test_applied_records_and_output_in_json():
    sd = {f"module.{k}": v for k, v in TinyNet().state_dict().items()}
    report = diagnose(sd, TinyNet())
    plan = plan_fixes(report)
    _, records = apply_fixes(sd, plan.fixes)
    doc = report_to_dict(report, plan, records, "fixed.pt")
    validate_doctor_json(doc)
    assert doc["applied"][0]["summary"] == "stripped 'module.' from 16 keys"
    assert doc["output"] == "fixed.pt" and doc["exit_code"] == 1


def test_text_groups_by_severity_and_ends_with_verdict_cause_and_next_step():
    text = render_report(messy_report())
    order = [text.index(h) for h in ("cannot be fixed (1)", "needs a decision (1)",
                                     "safe fixes (2)")]
    assert order == sorted(order)
    tail = text.strip().splitlines()[-3:]
    assert tail[0] == "verdict      incompatible"
    assert tail[1] == "likely cause the checkpoint's head was trained for another number of classes"
    assert tail[2] == "next step    no fix makes it load; see the remedies above"
    assert "[--allow drop-unexpected]" in text and text.startswith("checkpoint   messy.pt")


def test_text_for_a_clean_file_and_for_allowed_decisions():
    clean = render_report(diagnose(TinyNet().state_dict(), TinyNet()))
    assert clean.strip().endswith("next step    nothing to fix: load it with strict=True")
    report = diagnose(TinyNet(4).state_dict(), TinyNet())
    text = render_report(report, plan_fixes(report, ["adapt-input-channels"]))
    assert ("verdict      needs a decision; with --allow adapt-input-channels: loads after the "
            "allowed fixes") in text


def test_contents_json_and_text():
    metas = {k: M(tuple(v.shape), str(v.dtype)[6:]) for k, v in TinyNet().state_dict().items()}
    contents = Contents("x.pt", "torch-zip", 9000, ("model",), ((("ema",), 16),),
                        {"epoch": "3"}, {}, metas, tuple(group_by_depth(metas)), {},
                        (unsafe_global_finding(("os.system",)),))
    doc = json.loads(json.dumps(contents_to_dict(contents)))
    check_fields(doc, INSPECT_FIELDS)
    assert doc["tensors"] == 16 and doc["dtypes"] == {"float32": 14, "int64": 2}
    assert doc["findings"][0]["evidence"] == {"globals": ["os.system"]}
    text = render_contents(contents)
    assert "state dict   ['model']" in text and "[x] unsafe-global" in text
    assert "`os.system`" in text
    assert "  also        ['ema']: 16 tensors" in text and "  extra       epoch: 3" in text
