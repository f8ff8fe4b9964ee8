"""Prior-ability probes that need no downloaded data: what an instruct model can do before any training,
measured before and after to see forgetting (the offline stand-ins for the seeds' HellaSwag / MMLU).

* ``capitals`` (knowledge): "What is the capital of Peru?" and the reverse, "Lima is the capital of
  which country?", over a fixed table of 140 countries (280 questions). Correct if the expected name
  (or a listed alternative) appears as a word in the completion's first 300 characters.
* ``copy`` (instruction following): "Please repeat the following words: <3–5 random common words>".
  Correct if the phrase occurs, words in order, in the completion's first 300 characters (lowercased,
  punctuation dropped): SmolLM2-135M-Instruct often answers "The <phrase>." (base accuracy ≈ 30–40 %).

Both are evaluation probes: every split draws from the same population (nothing here is trained on), so
``train``/``test``/``probe`` differ only by their shuffling seed. ``capitals`` has 280 questions; asking
for more is an error naming the limit. Rewards read a bounded window of the completion (linear time).
"""
from __future__ import annotations

import random
import re
from typing import List

from esjax.tasks.base import Example, Reward, Task, register

# country -> capital (alternatives after "|"): capitals well defined and unambiguous, and never containing the
# country's name (Kuwait City, Luxembourg, Mexico City... would be answered by echoing the question)
CAPITALS = {
    "Afghanistan": "Kabul", "Albania": "Tirana", "Algeria": "Algiers", "Argentina": "Buenos Aires",
    "Armenia": "Yerevan", "Australia": "Canberra", "Austria": "Vienna", "Azerbaijan": "Baku",
    "Bangladesh": "Dhaka", "Belarus": "Minsk", "Belgium": "Brussels", "Bhutan": "Thimphu",
    "Bulgaria": "Sofia", "Cambodia": "Phnom Penh", "Cameroon": "Yaounde|Yaoundé", "Canada": "Ottawa",
    "Chile": "Santiago", "China": "Beijing|Peking", "Colombia": "Bogota|Bogotá", "Costa Rica": "San Jose|San José",
    "Croatia": "Zagreb", "Cuba": "Havana", "Cyprus": "Nicosia", "Czech Republic": "Prague",
    "Denmark": "Copenhagen", "Dominican Republic": "Santo Domingo", "Ecuador": "Quito", "Egypt": "Cairo",
    "El Salvador": "San Salvador", "Estonia": "Tallinn", "Ethiopia": "Addis Ababa", "Fiji": "Suva",
    "Finland": "Helsinki", "France": "Paris", "Gabon": "Libreville", "Georgia": "Tbilisi",
    "Germany": "Berlin", "Ghana": "Accra", "Greece": "Athens", "Guinea": "Conakry", "Guyana": "Georgetown", "Haiti": "Port-au-Prince|Port au Prince", "Honduras": "Tegucigalpa",
    "Hungary": "Budapest", "Iceland": "Reykjavik|Reykjavík", "India": "New Delhi|Delhi", "Indonesia": "Jakarta",
    "Iran": "Tehran", "Iraq": "Baghdad", "Ireland": "Dublin", "Italy": "Rome",
    "Jamaica": "Kingston", "Japan": "Tokyo", "Jordan": "Amman", "Kazakhstan": "Astana",
    "Kenya": "Nairobi", "Kyrgyzstan": "Bishkek", "Laos": "Vientiane",
    "Latvia": "Riga", "Lebanon": "Beirut", "Liberia": "Monrovia", "Libya": "Tripoli",
    "Lithuania": "Vilnius", "Madagascar": "Antananarivo", "Malawi": "Lilongwe",
    "Malaysia": "Kuala Lumpur", "Mali": "Bamako", "Malta": "Valletta", "Mauritania": "Nouakchott",
    "Moldova": "Chisinau|Chișinău", "Mongolia": "Ulaanbaatar|Ulan Bator", "Morocco": "Rabat",
    "Mozambique": "Maputo", "Myanmar": "Naypyidaw|Nay Pyi Taw", "Namibia": "Windhoek", "Nepal": "Kathmandu",
    "Netherlands": "Amsterdam", "New Zealand": "Wellington", "Nicaragua": "Managua", "Niger": "Niamey",
    "Nigeria": "Abuja", "North Korea": "Pyongyang", "Norway": "Oslo", "Oman": "Muscat",
    "Pakistan": "Islamabad", "Paraguay": "Asuncion|Asunción", "Peru": "Lima",
    "Philippines": "Manila", "Poland": "Warsaw", "Portugal": "Lisbon", "Qatar": "Doha",
    "Romania": "Bucharest", "Russia": "Moscow", "Rwanda": "Kigali", "Saudi Arabia": "Riyadh",
    "Senegal": "Dakar", "Serbia": "Belgrade", "Sierra Leone": "Freetown", "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "Somalia": "Mogadishu", "South Korea": "Seoul",
    "Spain": "Madrid", "Sudan": "Khartoum", "Suriname": "Paramaribo", "Sweden": "Stockholm",
    "Switzerland": "Bern|Berne", "Syria": "Damascus", "Taiwan": "Taipei", "Tajikistan": "Dushanbe",
    "Tanzania": "Dodoma", "Thailand": "Bangkok", "Togo": "Lome|Lomé", "Tunisia": "Tunis",
    "Turkey": "Ankara", "Turkmenistan": "Ashgabat", "Uganda": "Kampala", "Ukraine": "Kyiv|Kiev",
    "United Arab Emirates": "Abu Dhabi", "United Kingdom": "London", "United States": "Washington",
    "Uruguay": "Montevideo", "Uzbekistan": "Tashkent", "Venezuela": "Caracas", "Vietnam": "Hanoi",
    "Yemen": "Sanaa|Sana'a", "Zambia": "Lusaka", "Zimbabwe": "Harare", "Angola": "Luanda",
    "Botswana": "Gaborone", "Brazil": "Brasilia|Brasília", "Burkina Faso": "Ouagadougou", "Chad": "N'Djamena|Ndjamena",
    "Eritrea": "Asmara", "Gambia": "Banjul", "Lesotho": "Maseru", "Bahamas": "Nassau",
    "Barbados": "Bridgetown", "Belize": "Belmopan", "Brunei": "Bandar Seri Begawan", }
# country alternatives accepted in the reverse question
COUNTRY_ALIASES = {"United States": "United States|USA|U.S.|America|United States of America",
                   "United Kingdom": "United Kingdom|UK|U.K.|Britain|England|Great Britain",
                   "Czech Republic": "Czech Republic|Czechia", "Netherlands": "Netherlands|Holland",
                   "United Arab Emirates": "United Arab Emirates|UAE", "Myanmar": "Myanmar|Burma",
                   "South Korea": "South Korea|Korea", "North Korea": "North Korea|Korea",
                   "Gambia": "Gambia|The Gambia", "Bahamas": "Bahamas|The Bahamas"}

WINDOW = 300  # characters of the completion a probe reward reads


def _norm(text: str) -> str:
    return " " + re.sub(r"[^0-9a-zà-ÿ']+", " ", text[:WINDOW].lower()).strip() + " "


def mentions(completion: str, names: str) -> bool:
    """Whether any of the ``|``-separated ``names`` occurs as whole words in the completion's first
    ``WINDOW`` characters (case and punctuation ignored)."""
    text = _norm(completion)
    return any(_norm(n) in text for n in names.split("|"))


def _shuffled(items: list, split: str, seed: int, name: str) -> list:
    items = list(items)
    random.Random(f"{name}/{split}/{seed}").shuffle(items)
    return items


@register("capitals")
class Capitals(Task):
    name = "capitals"
    max_new_tokens = 16

    def __init__(self, instruction: str = "Answer in a few words."):
        self.instruction = instruction

    def questions(self) -> list:
        qs = [(f"What is the capital of {c}?", cap, c, "capital") for c, cap in CAPITALS.items()]
        qs += [(f"{cap.split('|')[0]} is the capital of which country?", COUNTRY_ALIASES.get(c, c), c, "country")
               for c, cap in CAPITALS.items()]
        return qs

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        qs = self.questions()
        if n > len(qs):
            raise ValueError(f"capitals has {len(qs)} questions; {n} were asked for (eval_size / probe_size)")
        return [Example(f"capitals/{split}/{seed}/{i}", q, ans, {"kind": kind, "country": c})
                for i, (q, ans, c, kind) in enumerate(_shuffled(qs, split, seed, self.name)[:n])]

    def user_message(self, example: Example) -> str:
        return f"{example.question} {self.instruction}"

    def reward(self, completion: str, example: Example) -> Reward:
        return Reward.binary(mentions(completion, example.answer))


# common, unambiguous lowercase words (no punctuation): phrases are drawn from them
WORDS = ("apple river stone green window music garden yellow bread chair mountain silver paper winter "
         "happy ocean candle forest orange pencil summer bridge cloud horse letter market shadow tiger "
         "violet wooden basket butter castle dinner engine feather guitar island jacket kitten lemon "
         "mirror needle pepper rabbit saddle ticket velvet wagon anchor bottle button carpet desert "
         "doctor finger flower hammer honey ladder marble meadow monkey napkin pillow planet pocket "
         "puzzle rocket sugar table tunnel turtle valley wallet whistle zebra cotton copper falcon").split()


@register("copy")
class Copy(Task):
    name = "copy"
    max_new_tokens = 16

    def examples(self, split: str, n: int, seed: int = 0) -> List[Example]:
        rng = random.Random(f"copy/{split}/{seed}")
        out = []
        for i in range(n):
            phrase = " ".join(rng.sample(WORDS, rng.randint(3, 5)))
            out.append(Example(f"copy/{split}/{seed}/{i}", f"Please repeat the following words: {phrase}", phrase))
        return out

    def reward(self, completion: str, example: Example) -> Reward:
        return Reward.binary(_norm(example.answer) in _norm(completion))
