"""Generate the polite-vs-curt preference (DPO) demo data (written for tunehouse; fixed seed).

Each pair answers one everyday question twice with the same facts: the preferred answer is
polite and complete ("Sure! The capital of Peru is Lima. Hope that helps!"), the other is curt
("Lima. Obviously."). Openers, closers and put-downs come from small pools, so a 135M model can
learn the style from ~180 pairs and carry it to unseen questions.

Why polite-vs-curt rather than concise-vs-rambling: preference accuracy compares summed
log-likelihoods, which favour shorter answers. An untuned model already "prefers" a concise
answer to a rambling one almost always, so training could not show a rise; here the preferred
answer is the longer one and the base model starts far below 50%.

    python examples/preference-polite/make_data.py   # rewrites train/validation/heldout.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

QA = tuple[str, str, str]  # question, full polite-answer sentence, curt fragment

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Spain", "Madrid"), ("Chile", "Santiago"), ("Germany", "Berlin"),
            ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Poland", "Warsaw"),
            ("Austria", "Vienna"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
            ("Ireland", "Dublin"), ("Hungary", "Budapest"), ("Argentina", "Buenos Aires"),
            ("Mexico", "Mexico City"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
            ("India", "New Delhi"), ("China", "Beijing"), ("Russia", "Moscow"),
            ("Turkey", "Ankara"), ("Morocco", "Rabat"), ("Ghana", "Accra"),
            ("Australia", "Canberra"), ("Colombia", "Bogota"), ("Cuba", "Havana"),
            ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Iceland", "Reykjavik"),
            ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"), ("South Korea", "Seoul"),
            ("Indonesia", "Jakarta"), ("Brazil", "Brasilia")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("early", "late"), ("happy", "sad"),
             ("light", "dark"), ("fast", "slow"), ("open", "closed"), ("full", "empty"),
             ("strong", "weak"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"),
             ("hard", "soft"), ("young", "old"), ("win", "lose"), ("push", "pull"),
             ("above", "below"), ("buy", "sell"), ("thick", "thin"), ("safe", "dangerous")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("tooth", "teeth"), ("foot", "feet"),
           ("goose", "geese"), ("woman", "women"), ("knife", "knives"), ("leaf", "leaves"),
           ("cactus", "cacti"), ("city", "cities"), ("box", "boxes"), ("person", "people"),
           ("wolf", "wolves"), ("potato", "potatoes"), ("fish", "fish"), ("sheep", "sheep")]
LEGS = [("spider", 8), ("dog", 4), ("bird", 2), ("ant", 6), ("horse", 4), ("octopus", 8),
        ("chicken", 2), ("beetle", 6), ("cat", 4), ("crab", 10), ("bee", 6), ("duck", 2)]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
HOWTO = [
    ("How do I keep bread fresh longer?", "Keep it in a bread box, and freeze any slices you "
     "will not eat within two days.", "Freeze it."),
    ("How long should I boil an egg for a soft yolk?", "About six minutes in boiling water "
     "gives a soft, runny yolk.", "Six minutes."),
    ("How can I stop my glasses from fogging up?", "A drop of dish soap rubbed on the lenses "
     "and wiped dry stops most fogging.", "Use soap."),
    ("What is a good way to remember names?", "Repeat the name back when you meet someone and "
     "use it once more in the conversation.", "Repeat them."),
    ("How do I get a stripped screw out?", "Press a wide rubber band between the screwdriver "
     "and the screw head for extra grip.", "Rubber band."),
    ("How often should I water a cactus?", "Every two to three weeks is enough, and less in "
     "winter.", "Rarely."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, dim the lights and put screens "
     "away an hour before bed.", "No screens."),
    ("How do I remove a coffee stain from a shirt?", "Rinse it with cold water from the back, "
     "then dab on a little dish soap before washing.", "Cold water."),
    ("What should I do if my phone gets wet?", "Turn it off, dry the outside and leave it to "
     "dry for a day before charging it.", "Dry it."),
    ("How do I ripen an avocado quickly?", "Put it in a paper bag with a banana for a day or "
     "two.", "Paper bag."),
    ("How can I make rice less sticky?", "Rinse the rice in cold water until it runs clear "
     "before cooking it.", "Rinse it."),
    ("How do I unclog a slow drain?", "Pour in baking soda, then vinegar, wait fifteen minutes "
     "and flush with hot water.", "Baking soda."),
    ("How can I keep cut apples from browning?", "Brush them with a little lemon juice.",
     "Lemon juice."),
    ("How do I clean a cast iron pan?", "Scrub it with hot water and salt, dry it on the stove "
     "and wipe on a thin layer of oil.", "Salt and oil."),
    ("How can I save battery on my phone?", "Lower the screen brightness and turn off apps "
     "running in the background.", "Dim the screen."),
    ("How do I stop a squeaky door hinge?", "Rub a little petroleum jelly or soap on the hinge "
     "pin.", "Oil it."),
]
FACTS = [
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius "
     "at sea level.", "100 C."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius.", "0 C."),
    ("How many days are in a leap year?", "A leap year has 366 days.", "366."),
    ("What is the largest planet in our solar system?", "The largest planet in our solar "
     "system is Jupiter.", "Jupiter."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air.",
     "CO2."),
    ("How many continents are there?", "There are seven continents.", "Seven."),
    ("What is the closest star to Earth?", "The closest star to Earth is the Sun.", "The Sun."),
    ("How many sides does a hexagon have?", "A hexagon has six sides.", "Six."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", "Au."),
    ("Which ocean is the largest?", "The Pacific is the largest ocean.", "Pacific."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings.",
     "Six."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green.",
     "Green."),
    ("What colour do you get by mixing red and white?", "Mixing red and white gives pink.",
     "Pink."),
    ("What colour do you get by mixing red and blue?", "Mixing red and blue gives purple.",
     "Purple."),
]

OPENERS = ["Sure!", "Of course!", "Great question!", "Happy to help!", "Good question!",
           "Certainly!", "Absolutely!", "Glad you asked!", "Sure thing!"]
CLOSERS = ["Hope that helps!", "Let me know if you need anything else.", "Have a great day!",
           "Feel free to ask if you have more questions.", "Happy to help anytime!",
           "Thanks for asking!", ""]
PUTDOWNS = ["", "", "Obviously.", "Next question.", "Look it up.", "Everyone knows that.",
            "Simple.", "Why ask me?", "Keep up."]
ASK = ["", "", "Quick question: ", "Can you help? ", "Hi! "]


def _families(rng: random.Random) -> list[Callable[[], QA]]:
    """Zero-argument makers of one question each (random ones draw from ``rng``)."""
    out: list[Callable[[], QA]] = []
    out += [lambda c=c, k=k: (f"What is the capital of {c}?", f"The capital of {c} is {k}.",
                              f"{k}.") for c, k in CAPITALS]
    out += [lambda w=w, o=o: (f"What is the opposite of '{w}'?",
                              f"The opposite of '{w}' is '{o}'.", f"{o.capitalize()}.")
            for w, o in OPPOSITES]
    out += [lambda w=w, p=p: (f"What is the plural of '{w}'?", f"The plural of '{w}' is '{p}'.",
                              f"{p.capitalize()}.") for w, p in PLURALS]
    out += [lambda a=a, n=n: (f"How many legs does a {a} have?", f"A {a} has {n} legs.",
                              f"{n}.") for a, n in LEGS]
    out += [lambda d=d, n=n: (f"What day comes after {d}?", f"The day after {d} is {n}.",
                              f"{n}.") for d, n in zip(DAYS, DAYS[1:] + DAYS[:1])]
    out += [lambda m=m, n=n: (f"Which month comes after {m}?", f"The month after {m} is {n}.",
                              f"{n}.") for m, n in zip(MONTHS, MONTHS[1:] + MONTHS[:1])]
    out += [lambda q=q, a=a, c=c: (q, a, c) for q, a, c in HOWTO + FACTS]
    for _ in range(45):
        a, b = rng.randint(11, 89), rng.randint(11, 89)
        out.append(lambda a=a, b=b: (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
                                     f"{a + b}."))
    for _ in range(30):
        a, b = rng.randint(40, 99), rng.randint(2, 39)
        out.append(lambda a=a, b=b: (f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.",
                                     f"{a - b}."))
    for _ in range(30):
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        out.append(lambda a=a, b=b: (f"What is {a} times {b}?", f"{a} times {b} is {a * b}.",
                                     f"{a * b}."))
    for h in range(2, 13):
        out.append(lambda h=h: (f"How many minutes are in {h} hours?",
                                f"There are {h * 60} minutes in {h} hours.", f"{h * 60}."))
    for w in range(2, 9):
        out.append(lambda w=w: (f"How many days are in {w} weeks?",
                                f"There are {w * 7} days in {w} weeks.", f"{w * 7}."))
    return out


def pair(qa: QA, rng: random.Random) -> dict:
    """One preference example: polite and complete (preferred) vs curt (not preferred)."""
    question, sentence, fragment = qa
    polite = " ".join(p for p in (rng.choice(OPENERS), sentence, rng.choice(CLOSERS)) if p)
    curt = " ".join(p for p in (fragment, rng.choice(PUTDOWNS)) if p)
    return {"input": {"messages": [{"role": "user", "content": rng.choice(ASK) + question}]},
            "preferred_output": [{"role": "assistant", "content": polite}],
            "non_preferred_output": [{"role": "assistant", "content": curt}]}


def main(out: Path = Path(__file__).parent, seed: int = 20260517) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    for make in _families(rng):
        qa = make()
        if qa[0] not in seen:  # random arithmetic can repeat a question
            seen.add(qa[0])
            rows.append(pair(qa, rng))
    rng.shuffle(rows)
    n_train, n_valid = 180, 30
    splits = {"train": rows[:n_train], "validation": rows[n_train:n_train + n_valid],
              "heldout": rows[n_train + n_valid:]}
    for name, items in splits.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in items)
        print(f"{name}: {len(items)} pairs")


if __name__ == "__main__":
    main()
