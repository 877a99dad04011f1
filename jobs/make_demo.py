"""Write the demo request set: ``jobs/demo.jsonl`` and its twin ``jobs/demo.parquet``.

The set exercises what a real workload has: short and long system prompts (as a string and as a
block list), a long shared system prefix marked with ``cache_control`` (5-minute and 1-hour
TTL) so prompt caching has something to cache, multi-turn conversations with an assistant
prefill, content-block messages, several models (one through Bifrost's ``provider/model`` form
with ``fallbacks``), ``max_tokens`` from 16 to 1024, sampling settings, tools, and metadata tags
for per-task reports. The output is deterministic: run ``python jobs/make_demo.py`` and the files
come out the same.

The Parquet twin stores ``params`` and ``metadata`` as JSON text, because request bodies of
different shapes (string vs block content, optional fields) do not fit one Parquet struct type.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SEED = 20250101

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-1"

_TOPICS = [
    ("billing", "charges, invoices, refunds and payment methods"),
    ("shipping", "delivery times, carriers, tracking numbers and lost parcels"),
    ("accounts", "sign-in problems, password resets and two-factor authentication"),
    ("returns", "the 30-day return window, return labels and exchanges"),
    ("warranty", "the two-year limited warranty, repairs and replacements"),
    ("privacy", "personal data requests, deletion and data export"),
    ("subscriptions", "plan changes, pauses, cancellations and renewals"),
    ("hardware", "setup, firmware updates, resets and diagnostics"),
]


def handbook() -> str:
    """A long, shared system prefix (several thousand tokens) worth caching."""
    parts = [
        "You are the support assistant of Northwind Devices. Follow this handbook exactly. "
        "Answer in the customer's language, be concise, never invent order data, and escalate "
        "to a human agent when the handbook says so."
    ]
    for n, (name, scope) in enumerate(_TOPICS, start=1):
        parts.append(f"\n\n## {n}. {name.title()}\nThis section covers {scope}.")
        for k in range(1, 7):
            parts.append(
                f"\n{n}.{k} When a customer asks about {name} (case {k}), first confirm the order "
                f"number and the email on the account, then check the {name} policy table for "
                f"the customer's region. If the request is older than {15 * k} days or involves "
                f"more than {50 * k} dollars, explain the policy plainly, offer the standard "
                f"remedy for {scope.split(',')[0]}, and escalate with the tag '{name}-{k}'. "
                "Never promise a date you cannot see in the order record."
            )
    return "".join(parts)


_DOCS = [
    "The city council voted on Tuesday to extend the bike-lane network by 40 kilometres over "
    "the next three years. Supporters cited a 25% rise in cycling since the first lanes opened; "
    "shop owners on Main Street worried about losing parking and asked for loading zones.",
    "Researchers reported a battery chemistry that keeps 90% of its capacity after 5,000 "
    "charge cycles. The cells use a sodium-based cathode, avoid cobalt, and cost an estimated "
    "30% less to produce, though their energy density is still lower than lithium-ion's.",
    "The quarterly report shows revenue up 12% to 4.1 million dollars, driven by the new "
    "subscription tier. Operating costs rose 18% because of hiring in support and sales, so "
    "operating margin fell from 14% to 9%. Management expects margins to recover next year.",
    "A volunteer group restored a 19th-century lighthouse on the northern coast. The lamp, "
    "dark since 1962, now runs on solar power and lights every evening. Tours start in June, "
    "with proceeds going to the coastal preservation fund.",
    "The software release adds offline mode, a redesigned search page and faster start-up on "
    "older phones. It also removes support for the legacy export format; users have until "
    "March to convert their files with the migration tool.",
    "Local farmers report an early harvest after an unusually warm spring. Strawberry yields "
    "are up, but the lack of rain has hurt wheat, and several farms have asked the region for "
    "emergency irrigation permits.",
    "The museum's new exhibition traces the history of timekeeping, from water clocks and "
    "sundials to atomic clocks. Visitors can adjust a replica pendulum and see how a change "
    "in length changes its period.",
    "A study of 2,000 remote workers found that those who kept fixed working hours reported "
    "less stress and better sleep than those with fully flexible schedules, while productivity "
    "was about the same in both groups.",
    "The national rail operator will replace 120 diesel trains with battery-electric units on "
    "rural lines by 2030. The trains recharge at terminal stations and on short electrified "
    "sections, avoiding the cost of wiring whole lines.",
    "After two years of negotiations, the two neighbouring towns agreed to share a single "
    "water treatment plant. The deal saves each town about a fifth of its water budget and "
    "requires a new pipeline under the river.",
]

_REVIEWS = [
    "Arrived a day early and works perfectly. Setup took two minutes.",
    "The battery died after a week. Support never answered my emails.",
    "It's fine. Does what it says, nothing more.",
    "Absolutely love the screen, but the speaker is tinny.",
    "Returned it. The app kept crashing and I lost my data twice.",
    "Best purchase this year, my whole family uses it every day.",
    "Packaging was damaged but the device inside was okay.",
    "Overpriced for what you get; the older model was better.",
    "Customer service replaced my faulty unit within three days. Impressed.",
    "Meh. The colours look different from the photos.",
]

_QUESTIONS = [
    "My parcel shows 'delivered' but I never received it. Order NW-88213.",
    "How do I reset my password if I no longer have access to my old email?",
    "I was charged twice for my subscription this month. Can you help?",
    "Can I return a speaker I bought 25 days ago if I already opened it?",
    "My thermostat stopped connecting to Wi-Fi after the firmware update.",
    "Please delete all the personal data you hold about me.",
    "I want to pause my subscription for two months while I travel.",
    "The screen on my tablet cracked on its own. Is that under warranty?",
    "Which carrier do you use for deliveries to Norway, and how long does it take?",
    "Can I switch from the monthly plan to the yearly plan and keep my discount?",
]


def _record(custom_id: str, params: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": params, "metadata": metadata}


def build() -> list[dict[str, Any]]:
    """The demo requests in the Message Batches shape, in a fixed order."""
    rng = random.Random(SEED)
    prefix = handbook()
    out: list[dict[str, Any]] = []

    for i, doc in enumerate(_DOCS, start=1):  # 10 summaries: short string system prompt
        out.append(
            _record(
                f"summarize-{i:03d}",
                {
                    "model": HAIKU,
                    "max_tokens": rng.choice([64, 128, 256]),
                    "system": "You summarise news items in one or two plain sentences.",
                    "messages": [{"role": "user", "content": f"Summarise:\n\n{doc}"}],
                    "temperature": 0.3,
                },
                task="summarize",
                split="dev" if i % 3 else "test",
            )
        )

    for i, review in enumerate(_REVIEWS, start=1):  # 10 classifications: tiny outputs
        out.append(
            _record(
                f"classify-{i:03d}",
                {
                    "model": HAIKU,
                    "max_tokens": 16,
                    "system": "Classify the review's sentiment. Answer with exactly one word: "
                    "positive, negative or neutral.",
                    "messages": [{"role": "user", "content": review}],
                    "temperature": 0.0,
                    "stop_sequences": ["\n"],
                },
                task="classify",
                split="dev" if i % 2 else "test",
            )
        )

    for i, question in enumerate(_QUESTIONS, start=1):  # 10 support answers on a cached prefix
        cache: dict[str, Any] = {"type": "ephemeral"}
        if i % 3 == 0:
            cache = {"type": "ephemeral", "ttl": "1h"}
        out.append(
            _record(
                f"support-{i:03d}",
                {
                    "model": SONNET,
                    "max_tokens": rng.choice([256, 384, 512]),
                    "system": [{"type": "text", "text": prefix, "cache_control": cache}],
                    "messages": [{"role": "user", "content": question}],
                },
                task="support",
                split="dev",
                cache_ttl=cache.get("ttl", "5m"),
            )
        )

    for i in range(1, 9):  # 8 multi-turn conversations, some ending in an assistant prefill
        doc = _DOCS[(i * 3) % len(_DOCS)]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"Here is a text:\n\n{doc}\n\nWhat is it about?"},
            {"role": "assistant", "content": "It is a short news item; I can go into detail."},
            {
                "role": "user",
                "content": rng.choice(
                    ["List three key facts.", "Who is affected, and how?", "What happens next?"]
                ),
            },
        ]
        if i % 4 == 0:
            messages += [
                {"role": "assistant", "content": "Here are the facts."},
                {"role": "user", "content": "Now write them as a JSON array of strings."},
                {"role": "assistant", "content": "["},  # prefill
            ]
        out.append(
            _record(
                f"chat-{i:03d}",
                {
                    "model": SONNET,
                    "max_tokens": rng.choice([128, 256, 512]),
                    "system": "You are a careful reading assistant.",
                    "messages": messages,
                    "temperature": round(rng.uniform(0.2, 1.0), 2),
                },
                task="chat",
                split="dev",
                turns=len(messages),
            )
        )

    for i in range(1, 7):  # 6 questions about one long document, cached inside the message
        question = rng.choice(
            [
                "Which section covers refunds, and what is its escalation tag?",
                "Summarise the shipping rules in three bullet points.",
                "What should the assistant never promise?",
                "How many days before warranty requests must be escalated in case 2?",
            ]
        )
        out.append(
            _record(
                f"docqa-{i:03d}",
                {
                    "model": SONNET if i % 2 else HAIKU,
                    "max_tokens": 300,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "text",
                                    "text": prefix,
                                    "cache_control": {"type": "ephemeral"},
                                },
                                {"type": "text", "text": question},
                            ],
                        }
                    ],
                    "top_p": 0.9,
                },
                task="docqa",
                split="test",
            )
        )

    for i, prompt in enumerate(  # 4 long-form answers from the largest model
        [
            "Explain, step by step, why the sum of the first n odd numbers is n squared.",
            "Compare optimistic and pessimistic locking, with one example where each wins.",
            "Design a schema for a library loans system and justify each table.",
            "Write a short story (about 300 words) about a lighthouse keeper's last night.",
        ],
        start=1,
    ):
        out.append(
            _record(
                f"longform-{i:03d}",
                {
                    "model": OPUS,
                    "max_tokens": 1024,
                    "system": [
                        {"type": "text", "text": "You are a precise, patient expert."},
                        {"type": "text", "text": "Use headings when an answer has parts."},
                    ],
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0.7,
                },
                task="longform",
                split="dev",
            )
        )

    for i, prompt in enumerate(  # 3 through the gateway's provider/model form with fallbacks
        [
            "Give me a haiku about gateways.",
            "In one sentence, what does a load balancer do?",
            "Translate 'good morning' into French, German and Japanese.",
        ],
        start=1,
    ):
        out.append(
            _record(
                f"gateway-{i:03d}",
                {
                    "model": f"anthropic/{SONNET}",
                    "max_tokens": 64 * i,
                    "messages": [{"role": "user", "content": prompt}],
                    "fallbacks": [f"anthropic/{HAIKU}"],
                },
                task="gateway",
                split="dev",
            )
        )

    weather_tool = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    for i, city in enumerate(["Oslo", "Lisbon"], start=1):  # 2 tool definitions
        out.append(
            _record(
                f"tools-{i:03d}",
                {
                    "model": SONNET,
                    "max_tokens": 200,
                    "tools": [weather_tool],
                    "tool_choice": {"type": "auto"},
                    "messages": [
                        {"role": "user", "content": f"Should I take an umbrella in {city}?"}
                    ],
                },
                task="tools",
                split="dev",
            )
        )

    for i in range(1, 8):  # 7 small, varied sampling settings and Anthropic's own metadata
        params: dict[str, Any] = {
            "model": rng.choice([HAIKU, SONNET]),
            "max_tokens": rng.choice([16, 32, 48, 96]),
            "messages": [
                {"role": "user", "content": f"Name {i + 1} prime numbers, comma separated."}
            ],
            "metadata": {"user_id": f"demo-user-{i % 3}"},
        }
        if i % 2:
            params["top_k"] = 40
        else:
            params["temperature"] = 1.0
        out.append(_record(f"misc-{i:03d}", params, task="misc", split="dev"))
    return out


def write(records: list[dict[str, Any]], directory: Path = HERE) -> tuple[Path, Path]:
    """Write ``demo.jsonl`` and ``demo.parquet`` into ``directory``."""
    jsonl = directory / "demo.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    table = pa.table(
        {
            "custom_id": pa.array([r["custom_id"] for r in records], pa.string()),
            "params": pa.array([orjson.dumps(r["params"]).decode() for r in records], pa.string()),
            "metadata": pa.array(
                [orjson.dumps(r["metadata"]).decode() for r in records], pa.string()
            ),
        }
    )
    parquet = directory / "demo.parquet"
    pq.write_table(table, parquet, compression="zstd")
    return jsonl, parquet


if __name__ == "__main__":
    demo = build()
    paths = write(demo)
    print(f"{len(demo)} requests -> {', '.join(str(p) for p in paths)}")
