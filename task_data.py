"""The built-in tasks' data (task.py): the words their questions are made of, and the paraphrase
templates that reword held-out questions for eval.paraphrased (training never sees them).
"""

ITEM_WORDS = [
    "apple", "banana", "pear", "plum", "grape", "lemon", "mango", "peach",
    "cherry", "melon", "cat", "dog", "cow", "horse", "sheep", "goat", "duck",
    "fish", "bird", "lion", "tiger", "bear", "wolf", "fox", "frog", "mouse",
]

# Common words in which no letter occurs more than 3 times, so answers are 0..3.
# Why 130 words: train and eval must be distinct questions, and a word has only ~5
# distinct letters, so with ~60 words most of 1200 distinct questions would be
# answer-0 ones. With 130, answers come out roughly 0: 47%, 1: 44%, 2: 8%, 3: 1%.
LETTER_WORDS = """
apple banana strawberry letter coffee balloon bookkeeper committee pepper cheese engineer tomorrow
successful little happy hello school yellow butter dinner summer rabbit puppy giraffe kitten jelly
window garden orange purple river forest pizza bubble mammal cotton parrot carrot pencil paper
bottle mirror planet rocket music doctor sister brother family friend people tennis zebra monkey
water table chair house green street queen moon book assistant elephant chocolate computer teacher
morning evening kitchen bedroom holiday birthday umbrella sandwich potato tomato cookie cereal
chicken turtle spider dolphin penguin rainbow thunder weather winter autumn mountain island ocean
desert valley bridge castle village market station airplane bicycle library hospital museum picture
address pillow blanket button basket jacket pocket ribbon candle dragon flower squirrel yogurt
noodle bread sugar salt lemon cherry grape melon peach onion garlic
""".split()


# More common words for `reverse`, so that its held-out set is large (4-7 letters, no palindromes).
MORE_WORDS = """
about above after again april black blue board boat bone brain brave brick brush cake camel card
chain chalk cloud clock coast coat cold corn couch crown dance desk dream dress drink drum eagle
earth field fire flag floor fruit glass glove goose grass happy heart horse hotel juice king knife
lake lamp laugh leaf light lunch magic maple metal milk money mouth movie nest night north novel
ocean olive paint party piano pilot plant plate pride prize quiet radio range robot roof rose round
sand scarf shape sheep shell shirt shoe silver skirt sleep smile snake snow socks sound south space
spoon sport stamp star stone storm story sunny sweet tiger toast tooth towel tower train tree truck
uncle voice watch whale wheel white wind wolf world write young zone animal answer breeze butter
camera circle coffee cousin danger editor farmer finger forest frozen ginger guitar hammer helmet
insect jungle kettle ladder lizard marble meadow mitten nature orange oyster pepper pirate planet
rabbit saddle silent singer spirit summer ticket timber violin wallet winner
""".split()
REVERSE_WORDS = sorted({w for w in LETTER_WORDS + ITEM_WORDS + MORE_WORDS
                        if 4 <= len(w) <= 7 and w != w[::-1]})


def reworded(pattern, *templates):
    """Task.paraphrases: each template (re.sub's replacement) paired with the question's pattern."""
    return tuple((pattern, template) for template in templates)


ADD_PARAPHRASES = reworded(r"^What is (\d+) \+ (\d+)\?", r"Add \1 and \2.",
                           r"Compute the sum of \1 and \2.", r"\1 plus \2 makes how much?")
PARAPHRASES = {                 # task name -> Task.paraphrases: (regex, replacement) pairs
    "add1": ADD_PARAPHRASES,
    "add2": ADD_PARAPHRASES,
    "larger": reworded(r"^Which is larger, (\d+) or (\d+)\?",
                       r"Between \1 and \2, name the greater one.",
                       r"Of the numbers \1 and \2, which is bigger?",
                       r"Tell me the greater number: \1 or \2."),
    "count_items": reworded(r"^How many items are in this list: (.*)\?",
                            r"Count the words in this list: \1.",
                            r"Here is a list: \1. How many entries does it have?",
                            r"What is the number of items in \1?"),
    "count_letter": reworded(r"^How many times does the letter '(.)' appear in '(\w+)'\?",
                             r"Count how often the letter '\1' occurs in the word '\2'.",
                             r"In '\2', how many times do you see '\1'?",
                             r"What is the number of '\1' letters in '\2'?"),
    "reverse": reworded(r"^Write the word '(\w+)' backwards\.",
                        r"Spell '\1' in reverse order.",
                        r"Reverse the letters of the word '\1'.",
                        r"What is '\1' written from right to left?"),
    "sort": reworded(r"^Sort these numbers from smallest to largest: (.*?)\.",
                     r"Put \1 in increasing order.",
                     r"Arrange these numbers in ascending order: \1.",
                     r"Order \1 from lowest to highest."),
}
