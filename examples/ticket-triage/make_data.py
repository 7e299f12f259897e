"""Generate the ticket-triage demo data set (written for tunehouse; fixed seed, reproducible).

Task: read a customer-support ticket and answer with strict JSON
``{"category": billing|shipping|technical|account, "priority": low|normal|high}``.
A small instruct model answers in prose or with a wrong schema before fine-tuning; after a
few minutes of LoRA on 240 examples it answers in the exact format with the right labels.

    python examples/ticket-triage/make_data.py   # rewrites train/validation/heldout.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = ("You triage customer-support tickets. Reply with JSON only, exactly: "
          '{"category": "billing|shipping|technical|account", "priority": "low|normal|high"}')

PRODUCTS = ["the Aero blender", "my Nimbus headphones", "the Orbit smart lamp", "a Terra backpack",
            "the Pulse fitness band", "my Vega coffee grinder", "the Quill e-reader",
            "two Luma desk lamps", "the Kite drone", "a Solace office chair", "the Brio kettle",
            "my Atlas router", "the Echo speaker set", "a pair of Trail boots"]
NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Raj", "Chloe", "Ivan",
         "Grace", "Diego", "Nora", "Felix", "Hana", "Sam"]

TEMPLATES = {
    "billing": [
        "I was charged twice for {p} on my last statement. Can you fix the double charge?",
        "My invoice #{n} shows the wrong amount for {p}.",
        "Why did my card get billed ${m} this month? I only ordered {p}.",
        "The discount code was not applied when I paid for {p}, please adjust the price.",
        "I need a copy of the receipt for {p} for my expense report.",
        "Your checkout charged me tax twice on {p}.",
        "My subscription renewed and charged ${m} even though I cancelled it.",
        "Please update the billing address on invoice #{n}.",
        "The payment for {p} failed but the money left my bank account.",
        "Can I switch from monthly to yearly billing and get the price difference back as credit?",
    ],
    "shipping": [
        "My order #{n} with {p} has not arrived yet, the tracking has not moved in days.",
        "The courier left {p} at the wrong address.",
        "{p} arrived with a crushed box and a broken part.",
        "Can you change the delivery address for order #{n} before it ships?",
        "Tracking says delivered but I never received {p}.",
        "How long does shipping to Canada take for {p}?",
        "I received someone else's package instead of {p}.",
        "Order #{n} only contained half of what I bought; {p} is missing.",
        "Can I pick up {p} at a store instead of having it delivered?",
        "The delivery for {p} was scheduled for Monday and it is now Thursday.",
    ],
    "technical": [
        "{p} will not turn on after the latest firmware update.",
        "The app keeps crashing when I try to pair {p}.",
        "{p} disconnects from wifi every few minutes.",
        "I get error code E{n} when I start {p}.",
        "The battery of {p} drains in an hour even when idle.",
        "How do I reset {p} to factory settings? The manual's steps do not work.",
        "{p} makes a loud grinding noise since yesterday.",
        "The touch controls on {p} stopped responding.",
        "Bluetooth pairing fails between {p} and my phone.",
        "The companion app shows {p} as offline although it is plugged in.",
    ],
    "account": [
        "I cannot log in to my account; the password reset email never arrives.",
        "Please change the email address on my account to {name}@example.org.",
        "How do I delete my account and all my data?",
        "Someone else may have accessed my account, I see an order for {p} I did not place.",
        "My two-factor code is not accepted when I sign in.",
        "I want to merge my two accounts into one.",
        "How can I change the name on my profile from {name} to my full name?",
        "My account was locked after too many login attempts.",
        "I no longer receive newsletters even though I am subscribed in my account settings.",
        "Can I add my partner {name} as a second user on my account?",
    ],
}

URGENCY = {
    "high": ["This is urgent, please help immediately.", "I need this fixed today!",
             "URGENT: it is for a gift tomorrow.", "Please respond ASAP, this is critical.",
             "I have been waiting a week and need this resolved right now."],
    "normal": ["Thanks for your help.", "Could you look into this?", "Please let me know.",
               "What are my options?", ""],
    "low": ["No rush, whenever you have time.", "Not urgent at all, just curious.",
            "Low priority, answer when convenient.", "Whenever you get a chance, thanks!",
            "It can wait until next week."],
}


def ticket(rng: random.Random) -> tuple[str, dict[str, str]]:
    """One ticket text and its gold label."""
    category = rng.choice(sorted(TEMPLATES))
    priority = rng.choice(["low", "normal", "normal", "high"])
    body = rng.choice(TEMPLATES[category]).format(
        p=rng.choice(PRODUCTS), n=rng.randint(1000, 99999), m=rng.randint(9, 499),
        name=rng.choice(NAMES).lower())
    body = body[0].upper() + body[1:]
    greeting = rng.choice(["", "Hi, ", "Hello team, ", "Hey. ", "Good morning! "])
    sign = rng.choice(["", f" - {rng.choice(NAMES)}", f"\n{rng.choice(NAMES)}"])
    text = f"{greeting}{body} {rng.choice(URGENCY[priority])}".strip() + sign
    return text, {"category": category, "priority": priority}


def example(text: str, label: dict[str, str]) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text},
        {"role": "assistant", "content": json.dumps(label)},
    ]}


def main(out: Path = Path(__file__).parent, seed: int = 20261122) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < 240 + 40 + 60:
        text, label = ticket(rng)
        if text not in seen:
            seen.add(text)
            rows.append(example(text, label))
    splits = {"train": rows[:240], "validation": rows[240:280], "heldout": rows[280:]}
    for name, items in splits.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in items)


if __name__ == "__main__":
    main()
