"""Writes demo/corpus.txt and demo/instructions.json: original template sentences (English and
Chinese) and instruction examples for the quick start. Run from the project root; the output
is shipped, so this only documents (and reproduces) how it was made."""
import json, random
rng = random.Random(2024)
animals = ["cat", "dog", "fox", "owl", "horse", "rabbit", "duck", "goat", "bear", "frog", "sheep", "mouse"]
places = ["forest", "farm", "river", "garden", "hill", "village", "meadow", "lake", "valley", "barn"]
foods = ["seeds", "grass", "berries", "fish", "apples", "carrots", "corn", "leaves", "insects", "bread"]
colors = ["red", "blue", "green", "yellow", "white", "black", "brown", "grey"]
times = ["morning", "afternoon", "evening", "night"]
verbs = ["runs", "walks", "sleeps", "sings", "plays", "rests", "swims", "waits"]
names = ["Anna", "Ben", "Chen", "Dara", "Eli", "Fang", "Gus", "Hana", "Ivan", "Jun", "Kai", "Lena"]
zh_animals = ["猫", "狗", "狐狸", "猫头鹰", "马", "兔子", "鸭子", "山羊", "熊", "青蛙", "羊", "老鼠"]
zh_places = ["森林", "农场", "河边", "花园", "山上", "村子", "草地", "湖边", "山谷", "谷仓"]
zh_foods = ["种子", "青草", "浆果", "鱼", "苹果", "胡萝卜", "玉米", "树叶", "虫子", "面包"]
zh_times = ["早上", "下午", "傍晚", "晚上"]
zh_names = ["小明", "小红", "小华", "小李", "小王", "小张", "小刚", "小美"]
nums = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
zh_nums = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十"]

def en_sentence():
    a, p, f, c, t, v, n = (rng.choice(x) for x in (animals, places, foods, colors, times, verbs, names))
    k = rng.randrange(1, 10)
    return rng.choice([
        f"The {c} {a} lives near the {p} and eats {f} every {t}.",
        f"In the {t}, the {a} {v} by the {p}.",
        f"{n} saw {nums[k]} {a}s at the {p} one {t}.",
        f"{n} gave the {a} some {f}, and the {a} was happy.",
        f"Every {t} {n} {v} to the {p} with a {c} bag of {f}.",
        f"The {a} does not like {f}; it prefers {rng.choice(foods)}.",
        f"When it rains, the {a} hides in the {p}.",
    ])

def zh_sentence():
    a, p, f, t, n = (rng.choice(x) for x in (zh_animals, zh_places, zh_foods, zh_times, zh_names))
    k = rng.randrange(1, 10)
    return rng.choice([
        f"{t}，{n}在{p}看见了{zh_nums[k]}只{a}。",
        f"这只{a}住在{p}，每天{t}吃{f}。",
        f"{n}给{a}带来了{f}，{a}很高兴。",
        f"下雨的时候，{a}躲在{p}里。",
        f"{n}每天{t}都去{p}散步。",
    ])

docs = []
while sum(len(d.encode()) for d in docs) < 48_000:
    make = en_sentence if rng.random() < 0.65 else zh_sentence
    joiner = " " if make is en_sentence else ""
    docs.append(joiner.join(make() for _ in range(rng.randrange(3, 9))))
with open("demo/corpus.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(docs) + "\n")

examples = []
for i in range(80):
    kind = i % 4
    if kind == 0:
        x, y = rng.randrange(0, 6), rng.randrange(0, 5)
        examples.append({"instruction": f"What is {nums[x]} plus {nums[y]}?", "input": "",
                         "output": f"{nums[x].capitalize()} plus {nums[y]} is {nums[x + y]}."})
    elif kind == 1:
        a, f = rng.choice(animals), rng.choice(foods)
        examples.append({"instruction": "Write one sentence about the animal, using the food.",
                         "input": f"{a}, {f}", "output": f"The {a} happily eats {f} in the {rng.choice(places)}."})
    elif kind == 2:
        k = rng.randrange(0, 11)
        examples.append({"instruction": "把这个数字翻译成中文。", "input": nums[k], "output": zh_nums[k]})
    else:
        j = rng.randrange(len(animals))
        examples.append({"instruction": f"“{zh_animals[j]}”用英语怎么说？", "input": "",
                         "output": f"“{zh_animals[j]}”的英语是 {animals[j]}。"})
with open("demo/instructions.json", "w", encoding="utf-8") as f:
    json.dump(examples, f, ensure_ascii=False, indent=1)
    f.write("\n")
