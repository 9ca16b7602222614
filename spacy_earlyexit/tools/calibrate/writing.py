"""Writing a calibrated pipeline: a copy with the chosen points in its
config and meta, made beside the output and renamed into place; which
outputs are refused."""

import json
import shutil
from pathlib import Path
from typing import Dict, Optional

from spacy import util

from ..outputs import check_output, replacing_directory


def is_calibrated_pipeline(path: Path) -> bool:
    """Whether `path` is a pipeline `calibrate` wrote (its meta says where it
    was calibrated): how an output written before outputs carried a marker
    (`outputs.MARKER_NAME`) is recognized."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("earlyexit"), dict) and "calibrated_on" in meta["earlyexit"]


def check_calibration_output(
    source: str, output: Path, dev_path: str, force: bool = False, code_path: Optional[Path] = None
) -> None:
    """Refuse (`outputs.OutputRefused`) an output `calibrate` must not write:
    the pipeline, the dev corpus or the code file, a path inside or around
    one, or an existing directory that is not an earlier calibrated pipeline
    (unless `force`)."""
    check_output(
        output, (source, dev_path, code_path), command="calibrate", force=force, earlier=is_calibrated_pipeline
    )


def write_calibrated(
    source: str, output: Path, result: Dict, dev_path: str, force: bool = False, code_path: Optional[Path] = None
) -> None:
    """Copy the pipeline to `output` with the points (and the reading window
    kept, when one was chosen) in its config and meta.
    The copy is made beside `output` and replaces it only when complete (see
    `check_calibration_output` for which outputs are refused)."""
    with replacing_directory(
        output, (source, dev_path, code_path), command="calibrate", force=force, earlier=is_calibrated_pipeline
    ) as partial:
        shutil.copytree(source, partial, dirs_exist_ok=True)
        name = result["component"]
        config = util.load_config(partial / "config.cfg", interpolate=False)
        specs = {p["name"]: {"policy": p["policy"], **p["params"]} for p in result["points"] if p["reached"]}
        config["components"][name]["operating_points"] = specs
        config["components"][name]["operating_point"] = result["default"] if result["default"] in specs else None
        if result.get("window"):  # the reading window calibration kept
            config["components"][name]["model"].update(result["window"]["kept"])
        config.to_disk(partial / "config.cfg")
        meta = json.loads((partial / "meta.json").read_text(encoding="utf8"))
        meta.setdefault("requirements", [])
        from ... import __version__

        requirement = f"spacy-earlyexit>={__version__}"
        if not any(r.startswith("spacy-earlyexit") for r in meta["requirements"]):
            meta["requirements"].append(requirement)
        meta["earlyexit"] = {**result, "calibrated_on": str(dev_path)}
        (partial / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf8")
