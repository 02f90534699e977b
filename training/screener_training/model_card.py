"""The model card (README.md) written into every exported model package."""

from __future__ import annotations

import json
from pathlib import Path

from ScreenerCore.config import ModelConfig


def write_model_card(folder: Path, config: ModelConfig, metrics_markdown: str = "") -> Path:
    """Write README.md with architecture, training data, command, revision and metrics."""
    provenance = config.provenance
    data = "\n".join(f"- {name}" for name in provenance.get("training_data", []))
    text = f"""---
license: apache-2.0
tags: [medical-imaging, ct, anomaly-detection, self-supervised]
---
# {config.name}

Screener model package: a descriptor net, a condition ({config.condition.kind}) and a
{config.density.kind} density q(descriptor | condition). The anomaly score of a voxel is
-log q in nats. Not a diagnostic device.

## Preprocessing and architecture
```json
{json.dumps({"preprocessing": config.to_dict()["preprocessing"], "descriptor": config.to_dict()["descriptor"],
             "condition": config.to_dict()["condition"], "density": config.to_dict()["density"]}, indent=2)}
```

## Training data
{data or "- (not recorded)"}

## Provenance
- command: `{provenance.get("command", "unknown")}`
- code revision: {provenance.get("code_revision", "unknown")}
- seconds per stage: {provenance.get("stage_seconds", {})}

## Metrics
{metrics_markdown or "See docs/benchmarks.md in the Screener repository."}
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
