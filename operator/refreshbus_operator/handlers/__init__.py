"""kopf registrations, and nothing else: each handler translates a kopf cause into a call
of a plain function in the package. Importing this package registers them all."""

from refreshbus_operator.handlers import autorefresh, configrefresh, injection, runtime  # noqa: F401
