"""Python client for the Cosnap Metrics ingest API: the four BusinessMetricsService calls,
buffered in memory and sent in batches by a background thread, retried without double counting.

Usage::

    from cosnap_metrics_sdk import MetricsClient

    with MetricsClient("http://127.0.0.1:8000", write_key, environment="prod") as metrics:
        metrics.track_revenue("subscription.renewal", "9.99", "USD", user_id="u1")
        metrics.business_metrics.track_conversion_step("photo_uploaded", "u1")  # the guide's calls

Receivers of the pipeline's signed alert webhooks check them with `verify_webhook`.
"""

from cosnap_metrics_sdk.client import SDK_VERSION, MetricsClient
from cosnap_metrics_sdk.events import Unit
from cosnap_metrics_sdk.guide import BusinessMetrics
from cosnap_metrics_sdk.webhooks import WebhookVerificationError, verify_webhook

__version__ = SDK_VERSION
__all__ = [
    "BusinessMetrics",
    "MetricsClient",
    "Unit",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
