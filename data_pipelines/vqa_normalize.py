r"""VQAv2's official answer normalisation (GT-Vision-Lab/VQA `vqaEval.py`, `processPunctuation` and
`processDigitArticle`), used both to build training targets and to score predictions, so a model is trained on
exactly the answers it is scored against. Which answers get which step is the metric's business
(vlm/eval/vqa_metric.py).

The official code is Python 2 (it has `print` statements), and its quirks are kept on purpose, because they are
what the published numbers were made with:
- a punctuation mark is deleted when it touches a space (or the text has a digit-comma-digit), otherwise it
  becomes a space; a period is deleted unless a digit follows it ("2.5" keeps its point), but only the first
  32: `periodStrip.sub("", outText, re.UNICODE)` passes re.UNICODE (= 32) as `sub`'s `count`, not as a flag;
- its patterns are compiled without re.UNICODE, so under Python 2 `\d` is [0-9] only; a Python 3 str pattern
  would match every Unicode decimal digit ("٣", "３"), hence re.ASCII here;
- Python 2's `unicode.lower()` maps one character to one (simple case mapping); Python 3's `str.lower()` uses the
  full mapping ("İ" -> "i" + a combining dot) and a final sigma, so lower case is taken one character at a time.
  Characters whose case changed between Unicode 5.2 (Python 2.7's database) and ours are not emulated;
- number words up to ten become digits, "none" becomes "0", articles are dropped, and a fixed list of
  apostrophe-less contractions gets its apostrophe back (with the list's own oddities, "somebody'd" ->
  "somebodyd").
"""

from __future__ import annotations

import re

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
# The official pattern reads `(?!<=\d)`: a lookahead for the literal "<=" + digit, not a lookbehind, so in
# effect every period is stripped unless a digit follows it. We keep that behaviour.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
PERIOD_STRIP_COUNT = 32  # re.UNICODE, passed where `sub` takes its count
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)", re.ASCII)
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# The official list of contractions written without their apostrophe (key) and their restored form.
CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd
howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've
it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've
mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've
oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't
shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've
shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've
somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've
someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd
somethingd've:something'd've something'dve:something'd've somethingll:something'll thats:that's
thered:there'd thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't
wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's
whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've
who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't
wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
""".split())


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: the conditions look at the input, the edits pile up on the output."""
    out = text
    has_digit_comma = COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def python2_lower(text: str) -> str:
    """Python 2's `unicode.lower()`: one character to one (see the module docstring)."""
    if text.isascii():
        return text.lower()
    return "".join("i" if c == "\u0130" else c.lower() for c in text)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower case, number words -> digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in python2_lower(text).split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_answer(answer: str) -> str:
    """The first step for every answer: newlines and tabs become spaces, then the ends are stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """Every step of the official normalisation (what the evaluator does to answers that need normalising)."""
    return process_digit_article(process_punctuation(clean_answer(answer)))
