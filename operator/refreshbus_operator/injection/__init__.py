"""Sidecar injection: the mutating admission webhook on Pod create.

- ``config``: the injector's settings (``REFRESHBUS_INJECTION_*``).
- ``mutation``: the pure decision (pod, namespace, config) -> JSONPatch or refusal, built from
  ``options`` (what the pod asks for), ``identity`` (its workload), ``security`` (the
  sidecar's securityContext), ``volumes`` (added volumes, rewritten app mounts) and
  ``container`` (the sidecar container spec); all pure.
- ``certs``: the self-signed CA and serving certificate, kept in a Secret and rotated.
- ``webhook``: the HTTPS server and caBundle patching of the MutatingWebhookConfiguration.
"""
