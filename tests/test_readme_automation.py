"""The README's "notify on failure" automation is accepted by a real Prefect API."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.usefixtures("prefect_api")
def test_documented_automation_is_created_on_prefect() -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    [text] = [b for b in re.findall(r"```yaml\n(.*?)```", README, flags=re.S) if "cml.run" in b]
    block_id = CustomWebhookNotificationBlock(
        name="ops", url="http://127.0.0.1:9/hook", json_data={"text": "{{subject}}"}
    ).save("cml-ops", overwrite=True)
    text = text.replace("<id of a Slack/e-mail notification block>", str(block_id))
    automation = AutomationCore.model_validate(yaml.safe_load(text))
    assert automation.trigger.expect == {"cml.run.failed"}  # type: ignore[union-attr]

    async def create() -> str:
        async with get_client() as client:
            automation_id = await client.create_automation(automation)
            return (await client.read_automation(automation_id)).name  # type: ignore[union-attr]

    assert asyncio.run(create()) == "cml-run-failed"
