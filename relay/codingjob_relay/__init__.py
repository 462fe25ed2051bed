"""The model relay: holds the providers' keys, checks each job's credential, enforces budgets.

Sidecars of CodingJobs call it instead of a provider (OpenAI-compatible ``/v1/chat/completions``);
provider keys stay in the operator's namespace and never reach a tenant namespace or a sandbox.
"""
