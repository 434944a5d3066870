"""The [bounces] settings of the webhooks (POST /webhooks/<provider>): checked when the
configuration is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication

from newsletter.errors import ConfigError

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
SETTINGS = {
    "NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": json.dumps([TOPIC]),
    "NEWSLETTER_BOUNCES_POSTMARK_USERNAME": "postmark",
    "NEWSLETTER_BOUNCES_POSTMARK_PASSWORD_ENV": "TEST_POSTMARK_PASSWORD",
}


@pytest.fixture
def pub(tmp_path: Path, database_url: str) -> Publication:
    publication = make_publication(tmp_path, database_url, 25)
    publication.env.update(SETTINGS)
    return publication


def test_valid_settings_are_read(pub: Publication) -> None:
    assert pub.config().bounces.ses_topic_arns == (TOPIC,)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": '["ses-bounces"]'}, "ses_topic_arns"),
        (
            {"NEWSLETTER_BOUNCES_SES_TOPIC_ARNS": '["arn:aws:sqs:eu-west-1:123456789012:q"]'},
            "ses_topic_arns",
        ),
        ({"NEWSLETTER_BOUNCES_POSTMARK_PASSWORD_ENV": ""}, "postmark_password_env"),
        ({"NEWSLETTER_BOUNCES_POSTMARK_USERNAME": ""}, "postmark_username"),
        ({"NEWSLETTER_BOUNCES_POSTMARK_USERNAME": "a:b"}, "postmark_username"),
    ],
)
def test_webhook_settings_are_checked(pub: Publication, settings: dict[str, str], needle: str):
    with pytest.raises(ConfigError, match=f"\\[bounces\\] {needle}"):
        pub.config(**settings)
