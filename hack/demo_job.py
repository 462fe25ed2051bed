"""Print the sample CodingJob pointed at a real OpenAI-compatible model (used by `make demo`)."""

from __future__ import annotations

import argparse
import sys

import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sample")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    with open(args.sample, encoding="utf-8") as f:
        job = yaml.safe_load(f)
    job["metadata"]["namespace"] = args.namespace
    model = job["spec"].setdefault("model", {})
    model["baseURL"] = args.base_url
    model["name"] = args.model
    # The real endpoint is outside the cluster: let the sandbox reach it.
    job["spec"].setdefault("network", {})["egress"] = "Open"
    yaml.safe_dump(job, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
