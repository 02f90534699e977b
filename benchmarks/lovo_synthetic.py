"""Leave-one-volume-out synthetic-lesion benchmark over the training CTs.

Usage:
    python benchmarks/lovo_synthetic.py [--hosts NAME ...] [--configurations NAME ...]
        [--work-root DIR] [--results DIR] [--threads N]

A host is a training CT, named by its file stem, and a configuration is a row name of
benchmarks/ablation.py. For each host and configuration, the script trains that
configuration with the ablation's budget on the other training CTs and exports a package.
synthetic_lesions.py then inserts lesions into the host and scores them. Results go under
--results: one CSV per host and configuration, lovo.csv (all rows) and lovo.md (the table).

So settings are chosen on volumes no model saw, not on the two evaluation CTs alone.
The hosts carry real, unlabelled pathology (see the data README); voxels of it count
as normal tissue here, which lowers every scorer's numbers alike.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from ablation import ROWS, SHARED_CT, Runner, train_row

REPO_ROOT = Path(__file__).resolve().parents[1]
# One chest CT (lung, mediastinum, chest wall) and one upper-abdomen CT (liver, muscle, fat).
DEFAULT_HOSTS = ("chest_lidc0314", "abdomen_hcc048")
DEFAULT_CONFIGURATIONS = ("vicreg32-masked-gaussian", "infonce32-none-gaussian")

logger = logging.getLogger("lovo")


def training_files(host: str) -> tuple[Path, list[str]]:
    """Return the host CT and the other training CTs, which its models train on."""
    files = sorted((SHARED_CT / "train").glob("*.nii.gz"))
    hosts = [path for path in files if path.name.split(".")[0] == host]
    if not hosts:
        raise SystemExit(f"Host '{host}' is not a training CT; choose one of "
                         f"{', '.join(path.name.split('.')[0] for path in files)}.")
    return hosts[0], [str(path) for path in files if path != hosts[0]]


def write_tables(results: Path, csv_files: list[Path]) -> None:
    """Gather the per-host CSVs into lovo.csv and a markdown table with the mean over hosts."""
    rows = []
    for path in csv_files:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                # The intensity score does not depend on the configuration; keep it once per host.
                row["configuration"] = path.stem.split("__")[1] if row["scorer"] == "model" else "intensity-baseline"
                if row["configuration"] == "intensity-baseline" and any(
                        r["configuration"] == "intensity-baseline" and r["volume"] == row["volume"] for r in rows):
                    continue
                rows.append(row)
    if not rows:
        return
    with open(results / "lovo.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    metrics = ["auroc", "partial_auroc", "auroc_lung", "auroc_soft_tissue", "auroc_fat"]
    lines = ["| configuration | host | AUROC | AUROC@0.3 | AUROC lung | AUROC soft tissue | AUROC fat |",
             "|---|---|---|---|---|---|---|"]
    for configuration in dict.fromkeys(row["configuration"] for row in rows):
        mine = [row for row in rows if row["configuration"] == configuration]
        for row in mine:
            lines.append(f"| {configuration} | {row['volume']} | "
                         + " | ".join(f"{float(row[m]):.3f}" for m in metrics) + " |")
        means = [sum(float(row[m]) for row in mine) / len(mine) for m in metrics]
        lines.append(f"| {configuration} | mean of {len(mine)} | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    (results / "lovo.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", nargs="+", default=list(DEFAULT_HOSTS), help="training CT stems to hold out")
    parser.add_argument("--configurations", nargs="+", default=list(DEFAULT_CONFIGURATIONS),
                        help="row names of benchmarks/ablation.py")
    parser.add_argument("--work-root", type=Path, default=Path("/tmp/screener_lovo"),
                        help="folder for trained nets, packages and the preprocessing cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessing cache (default WORK_ROOT/cache)")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "lovo_results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    by_name = {row.name: row for row in ROWS}
    unknown = [name for name in args.configurations if name not in by_name]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    # Every host is checked before the first one trains for minutes.
    held_out = {host: training_files(host) for host in args.hosts}
    args.results.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.threads, args.results / "lovo.log")
    cache = args.cache_dir or args.work_root / "cache"

    for host, (host_file, data) in held_out.items():
        for name in args.configurations:
            # Every CT but the host: the host's stages get their own work folder.
            package, _ = train_row(by_name[name], runner, args.work_root / host, cache, [], data)
            output = args.results / f"{host}__{name}.csv"
            command = [sys.executable, str(REPO_ROOT / "benchmarks" / "synthetic_lesions.py"),
                       "--volume", str(host_file), "--model", str(package), "--csv", str(output)]
            runner.run(command, output, args.work_root / host / name / "synthetic.wall_s")
            write_tables(args.results, sorted(args.results.glob("*__*.csv")))
    logger.info("Finished; table in %s", args.results / "lovo.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
