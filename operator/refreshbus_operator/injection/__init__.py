"""Sidecar injection: the mutating admission webhook on Pod create.

- ``config``: the injector's settings (``REFRESHBUS_INJECTION_*``).
- ``mutation``: the pure decision (pod, namespace, config) -> JSONPatch or refusal.
- ``certs``: the self-signed CA and serving certificate, kept in a Secret and rotated.
- ``webhook``: the HTTPS server and caBundle patching of the MutatingWebhookConfiguration.
"""
