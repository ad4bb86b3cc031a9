"""Build ecombot's built-in catalog: original products for the fictional store Harbor & Pine.

Each product has consistent attributes (a walnut table is brown or natural, never "glass"; a price fits its category
and material) and an original reference description in the store's voice that states them, for the product-copy
task; related SKUs link products of one collection. Everything here was written for the project.
Rerun after changing it:  python scripts/build_builtin_catalog.py
The output is deterministic (seeded), so the committed file only changes when this script does.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/ecombot/catalog/builtin/harbor_pine_catalog.jsonl"
SEED = 20261202
PER_CATEGORY = 20

COLLECTIONS = ["Harbor", "Pine Ridge", "Saltmarsh", "Alder", "Driftwood", "Linden", "Cove", "Birchwood", "Moorland",
               "Tidewater", "Fernhill", "Ashby"]

# category -> (product nouns, materials with a price factor and the colours they come in, sizes with a price factor
# and dimensions, base price, care)
CATEGORIES: dict[str, dict] = {
    "side table": {
        "nouns": ["side table", "end table", "nightstand"],
        "materials": {"walnut": (1.4, ["natural walnut", "dark brown"]), "oak": (1.2, ["natural oak", "white"]),
                      "pine": (0.8, ["natural pine", "black", "white"]), "steel": (0.9, ["black", "brass"])},
        "sizes": {"small": (1.0, "40 x 40 x 50 cm"), "large": (1.35, "55 x 45 x 60 cm")},
        "base": 129, "care": "Wipe with a dry cloth; keep away from standing water.",
    },
    "coffee table": {
        "nouns": ["coffee table", "low table"],
        "materials": {"walnut": (1.4, ["natural walnut", "dark brown"]), "oak": (1.2, ["natural oak", "white"]),
                      "pine": (0.8, ["natural pine", "black"]), "glass": (1.1, ["clear"])},
        "sizes": {"small": (1.0, "80 x 50 x 40 cm"), "large": (1.3, "120 x 60 x 40 cm")},
        "base": 219, "care": "Wipe with a damp cloth and dry at once; use coasters for hot drinks.",
    },
    "desk chair": {
        "nouns": ["desk chair", "office chair", "task chair"],
        "materials": {"fabric": (1.0, ["grey", "navy", "green"]), "leather": (1.6, ["tan", "black", "brown"]),
                      "mesh": (1.1, ["black", "grey"])},
        "sizes": {"standard": (1.0, "62 x 60 x 95 cm")},
        "base": 179, "care": "Vacuum the seat; spot clean with mild soap and water.",
    },
    "table lamp": {
        "nouns": ["table lamp", "bedside lamp", "desk lamp"],
        "materials": {"ceramic": (1.0, ["white", "sage green", "terracotta"]), "brass": (1.5, ["brass"]),
                      "oak": (1.2, ["natural oak"]), "glass": (1.1, ["clear", "amber"])},
        "sizes": {"small": (1.0, "30 cm tall"), "large": (1.4, "55 cm tall")},
        "base": 59, "care": "Dust with a dry cloth; unplug before cleaning.",
    },
    "rug": {
        "nouns": ["rug", "area rug", "runner"],
        "materials": {"wool": (1.5, ["cream", "grey", "rust", "navy"]), "jute": (0.9, ["natural"]),
                      "cotton": (0.8, ["cream", "blue", "green", "grey"])},
        "sizes": {"2 x 3 ft": (0.4, "2 x 3 ft"), "5 x 8 ft": (1.0, "5 x 8 ft"), "8 x 10 ft": (1.7, "8 x 10 ft")},
        "base": 149, "care": "Vacuum weekly without the beater bar; blot spills, do not rub.",
    },
    "duvet cover": {
        "nouns": ["duvet cover", "duvet cover set"],
        "materials": {"cotton percale": (1.0, ["white", "grey", "blue"]), "linen": (1.6, ["white", "oat", "sage green",
                                                                                             "terracotta"]),
                      "cotton sateen": (1.2, ["white", "ivory", "charcoal"])},
        "sizes": {"twin": (0.8, "170 x 220 cm"), "queen": (1.0, "230 x 220 cm"), "king": (1.2, "260 x 220 cm")},
        "base": 89, "care": "Machine wash warm, tumble dry low.",
    },
    "throw blanket": {
        "nouns": ["throw blanket", "throw"],
        "materials": {"wool": (1.4, ["grey", "cream", "mustard"]), "cotton": (1.0, ["cream", "blue", "green"]),
                      "cashmere blend": (2.2, ["oat", "grey"])},
        "sizes": {"standard": (1.0, "130 x 170 cm")},
        "base": 59, "care": "Hand wash cold or dry clean; dry flat.",
    },
    "bath towel set": {
        "nouns": ["bath towel set", "towel set"],
        "materials": {"Turkish cotton": (1.3, ["white", "grey", "blue"]), "organic cotton": (1.1, ["white", "sand",
                                                                                                    "sage green"]),
                      "waffle cotton": (1.0, ["white", "grey"])},
        "sizes": {"set of 2": (0.6, "70 x 140 cm each"), "set of 4": (1.0, "70 x 140 cm each")},
        "base": 69, "care": "Machine wash warm; no fabric softener.",
    },
    "curtains": {
        "nouns": ["curtains", "curtain panels"],
        "materials": {"linen": (1.4, ["white", "oat", "grey"]), "velvet": (1.6, ["green", "navy", "rust"]),
                      "cotton": (1.0, ["white", "cream", "blue"])},
        "sizes": {"84 in": (1.0, "84 in long"), "96 in": (1.15, "96 in long")},
        "base": 79, "care": "Machine wash cold on a gentle cycle; hang to dry.",
    },
    "frying pan": {
        "nouns": ["frying pan", "skillet"],
        "materials": {"cast iron": (1.0, ["black"]), "stainless steel": (1.3, ["silver"]),
                      "non-stick aluminium": (0.8, ["black", "grey"])},
        "sizes": {"20 cm": (0.8, "20 cm diameter"), "28 cm": (1.0, "28 cm diameter")},
        "base": 49, "care": "Hand wash and dry at once.",
    },
    "kettle": {
        "nouns": ["kettle", "electric kettle"],
        "materials": {"stainless steel": (1.0, ["silver", "black"]), "enamel": (1.2, ["red", "blue", "white"]),
                      "glass": (1.1, ["clear"])},
        "sizes": {"1 litre": (0.9, "holds 1 litre"), "1.7 litre": (1.0, "holds 1.7 litres")},
        "base": 59, "care": "Descale once a month; wipe the outside with a damp cloth.",
    },
    "mug set": {
        "nouns": ["mug set", "set of mugs"],
        "materials": {"stoneware": (1.0, ["white", "blue", "speckled grey"]), "porcelain": (1.2, ["white", "black"])},
        "sizes": {"set of 4": (1.0, "350 ml each"), "set of 6": (1.4, "350 ml each")},
        "base": 39, "care": "Dishwasher and microwave safe.",
    },
    "dinner plates": {
        "nouns": ["dinner plates", "plate set"],
        "materials": {"stoneware": (1.0, ["white", "blue", "speckled grey"]), "porcelain": (1.2, ["white"])},
        "sizes": {"set of 4": (1.0, "27 cm across"), "set of 6": (1.4, "27 cm across")},
        "base": 49, "care": "Dishwasher and microwave safe.",
    },
    "cutting board": {
        "nouns": ["cutting board", "serving board"],
        "materials": {"walnut": (1.5, ["natural walnut"]), "maple": (1.2, ["natural maple"]),
                      "bamboo": (0.7, ["natural bamboo"])},
        "sizes": {"small": (0.7, "30 x 20 cm"), "large": (1.0, "45 x 30 cm")},
        "base": 45, "care": "Hand wash; oil monthly with food-safe mineral oil.",
    },
    "vase": {
        "nouns": ["vase", "bud vase"],
        "materials": {"glass": (1.0, ["clear", "green", "amber"]), "ceramic": (1.2, ["white", "terracotta", "blue"])},
        "sizes": {"small": (0.7, "15 cm tall"), "large": (1.0, "30 cm tall")},
        "base": 35, "care": "Hand wash only.",
    },
    "candle set": {
        "nouns": ["candle set", "scented candles"],
        "materials": {"soy wax": (1.0, ["white", "sage green", "amber"]), "beeswax": (1.4, ["honey"])},
        "sizes": {"set of 2": (0.7, "40 hours of burning each"), "set of 3": (1.0, "40 hours of burning each")},
        "base": 32, "care": "Trim the wick to 5 mm before each use; never leave a burning candle.",
    },
}

USES = {
    "side table": ["Just the right height beside a sofa or a bed.", "Room for a lamp, a book and a cup of tea."],
    "coffee table": ["The centre of a living room, with space for books and board games.",
                     "Low and roomy, for the sofa's evening snacks."],
    "desk chair": ["Adjustable height and a supportive back for long days at the desk.",
                   "Smooth castors and a seat that stays comfortable from the first call to the last."],
    "table lamp": ["A soft, warm light for reading corners and bedside tables.",
                   "Takes an E26 bulb (not included) and switches on at the base."],
    "rug": ["Soft underfoot and easy to live with.", "Grounds a room and quiets the echo of bare floors."],
    "duvet cover": ["Closes with hidden buttons and has corner ties to keep the duvet in place.",
                    "Breathable and soft from the first night, softer with every wash."],
    "throw blanket": ["Made for the end of the sofa and cold evenings.", "Light enough to carry around the house."],
    "bath towel set": ["Thirsty, quick to dry and soft after every wash.", "A hotel feel for the everyday bathroom."],
    "curtains": ["Rod pocket and back tabs, so they hang either way.", "Filters daylight while keeping the room private."],
    "frying pan": ["Heats evenly on gas, electric and induction hobs.", "Goes from the hob straight into the oven."],
    "kettle": ["Boils fast and switches off by itself when done.", "A cool-touch handle and a water window you can read."],
    "mug set": ["Sized for a proper cup of coffee.", "Stacks neatly in a small cupboard."],
    "dinner plates": ["Everyday plates that look good enough for guests.", "Chip-resistant rims for daily use."],
    "cutting board": ["Gentle on knife edges, with a juice groove on one side.", "Doubles as a board for cheese and bread."],
    "vase": ["For a single stem or a generous bunch.", "Watertight and weighted so it stands steady."],
    "candle set": ["Clean-burning, with cotton wicks.", "A warm glow for the dinner table."],
}

OPENINGS = [
    "Meet the {title}.", "The {title} is made for everyday life.", "Simple, sturdy and easy to love: the {title}.",
    "Our {title} brings a calm, warm look to any room.", "Made to last, the {title} keeps things simple.",
]
MATERIAL_LINES = [
    "It is made of {material}, in {colour}.", "Made from {material}, it comes in {colour}.",
    "We make it in {material}, finished in {colour}.", "Choose it in {colour}; it is made of {material}.",
]
SIZE_LINES = ["Size: {dimensions}.", "Dimensions: {dimensions}.", "Measurements: {dimensions}."]
CLOSINGS = [
    "Care: {care}", "To keep it looking its best: {care}", "{care}",
]
PRICE_LINES = ["${price:.2f}.", "Priced at ${price:.2f}.", "Yours for ${price:.2f}."]


def describe(rng: random.Random, product: dict) -> str:
    a = product["attributes"]
    parts = [rng.choice(OPENINGS).format(title=product["title"]),
             rng.choice(MATERIAL_LINES).format(material=a["material"], colour=a["colour"]),
             rng.choice(USES[product["category"]]),
             rng.choice(SIZE_LINES).format(dimensions=a["dimensions"]),
             rng.choice(CLOSINGS).format(care=a["care"]),
             rng.choice(PRICE_LINES).format(price=product["price"])]
    return " ".join(parts)


def build() -> list[dict]:
    rng = random.Random(SEED)
    products, seen = [], set()
    for code, (category, spec) in enumerate(CATEGORIES.items(), start=1):
        made = 0
        while made < PER_CATEGORY:
            material = rng.choice(sorted(spec["materials"]))
            factor, colours = spec["materials"][material]
            colour = rng.choice(colours)
            size = rng.choice(sorted(spec["sizes"]))
            size_factor, dimensions = spec["sizes"][size]
            collection, noun = rng.choice(COLLECTIONS), rng.choice(spec["nouns"])
            key = (collection, noun, material, colour, size)
            if key in seen:
                continue
            seen.add(key)
            made += 1
            price = round(spec["base"] * factor * size_factor * rng.uniform(0.9, 1.1)) - 0.01
            title = f"{collection} {material} {noun}" + (f", {size}" if len(spec["sizes"]) > 1 else "")
            product = {"sku": f"HP-{code:02d}{made:03d}", "title": title, "category": category, "price": price,
                       "attributes": {"material": material, "colour": colour, "size": size,
                                      "dimensions": dimensions, "care": spec["care"], "collection": collection}}
            if len(spec["sizes"]) == 1:  # one size for the whole category: not something to choose or state
                del product["attributes"]["size"]
            product["description"] = describe(rng, product)
            products.append(product)
    by_collection: dict[str, list[str]] = {}
    for p in products:
        by_collection.setdefault(p["attributes"]["collection"], []).append(p["sku"])
    for p in products:  # related: up to 3 other products of the same collection
        mates = [s for s in by_collection[p["attributes"]["collection"]] if s != p["sku"]]
        rng.shuffle(mates)
        p["related"] = sorted(mates[:3])
    return products


def main() -> None:
    products = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in products), encoding="utf-8")
    print(f"{len(products)} products in {len(CATEGORIES)} categories -> {OUT}")


if __name__ == "__main__":
    main()
