"""`make demo` with a real model: the chart values of its relay provider, and the sample job.

demo_job.py relay-values --base-url URL --key-secret NAME [--with-key]
demo_job.py job SAMPLE --namespace NS --provider NAME --model MODEL
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

#: The provider name the demo configures in the relay.
PROVIDER = "llm"


def relay_values(base_url: str, key_secret: str | None) -> dict[str, Any]:
    """Chart values: the relay on, one provider whose key is in ``key_secret`` (if any)."""
    provider: dict[str, Any] = {"name": PROVIDER, "baseURL": base_url}
    if key_secret:
        provider["apiKeySecret"] = {"name": key_secret, "key": "api-key"}
    return {"relay": {"enabled": True, "defaultProvider": PROVIDER, "providers": [provider]}}


def job(sample: dict[str, Any], namespace: str, provider: str, model: str) -> dict[str, Any]:
    """The sample job using ``provider`` of the relay: no endpoint, no key of its own."""
    job = dict(sample)
    job["metadata"] = {**sample["metadata"], "namespace": namespace}
    spec = dict(sample["spec"])
    # The relay holds the endpoint and the key; the sandbox reaches only the relay (Restricted).
    spec["model"] = {
        k: v
        for k, v in (spec.get("model") or {}).items()
        if k not in ("baseURL", "apiKeySecretRef")
    }
    spec["model"].update(provider=provider, name=model)
    job["spec"] = spec
    return job


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    values = sub.add_parser("relay-values")
    values.add_argument("--base-url", required=True)
    values.add_argument("--key-secret", required=True)
    values.add_argument("--with-key", action="store_true", help="the provider needs the key")
    sample = sub.add_parser("job")
    sample.add_argument("sample")
    sample.add_argument("--namespace", required=True)
    sample.add_argument("--provider", default=PROVIDER)
    sample.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    if args.command == "relay-values":
        out = relay_values(args.base_url, args.key_secret if args.with_key else None)
    else:
        with open(args.sample, encoding="utf-8") as f:
            out = job(yaml.safe_load(f), args.namespace, args.provider, args.model)
    yaml.safe_dump(out, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
