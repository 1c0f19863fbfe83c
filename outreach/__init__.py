"""outreach: keeps referring physicians informed, one clinically worded email per milestone."""

from outreach.errors import (
    BatchAbort,
    DeliveryError,
    OutreachError,
    PermanentError,
    RenderError,
    RuleError,
    SettingsError,
    TransientError,
)
from outreach.settings import Settings

__all__ = [
    "BatchAbort",
    "DeliveryError",
    "OutreachError",
    "PermanentError",
    "RenderError",
    "RuleError",
    "Settings",
    "SettingsError",
    "TransientError",
]
