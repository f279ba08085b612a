"""A raw Chinese web-like corpus for the cleaning pipeline's example and tests: real modern
Chinese prose from the LibreOffice help (Debian's libreoffice-help-zh-cn, MPL-2.0; read where
scripts/setup_env.sh unpacked it, never copied here), news-like paragraphs built from templates
where it is missing, and the pages a pipeline should drop, made from them:
navigation menus, keyword spam, repeated lines, mojibake, exact and near copies, English and
Japanese pages, and personal data planted in kept ones.

    python data_tools/sample_corpus_zh.py --output-dir raw/ --docs 1500
"""

import argparse
import json
import os
import random
from functools import lru_cache
from typing import List

from data_tools.libreoffice_help_zh import LICENSE, PACKAGE, help_pages, package_version
from megalite.utils.cli import run_tool

CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆", "天津", "苏州",
          "长沙", "郑州", "青岛", "厦门", "昆明", "大连", "沈阳", "哈尔滨"]
ORGS = ["市政府", "教育局", "交通委员会", "卫生健康委员会", "气象台", "统计局", "科技局", "文化和旅游局", "生态环境局",
        "商务局"]
TOPICS = ["城市更新", "公共交通", "空气质量", "义务教育", "数字经济", "养老服务", "防汛抗旱", "乡村振兴", "科技创新",
          "文化旅游", "就业保障", "食品安全"]
PEOPLE = ["王建国", "李晓梅", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "黄丽", "周强", "吴敏"]
TEMPLATES = [
    "{city}{org}于{m}月{d}日召开{topic}工作会议，{person}出席会议并讲话。",
    "会议指出，今年以来全市{topic}工作取得了明显成效，但也存在一些需要解决的问题。",
    "据{org}介绍，截至{m}月底，全市共完成相关项目{n}个，累计投入资金{k}亿元。",
    "{person}表示，下一步将继续加大投入力度，推动{topic}工作向纵深发展。",
    "记者从{city}{org}了解到，{topic}方面的新政策将于{m}月{d}日起正式实施。",
    "不少市民在接受采访时说，这些变化让他们的日常生活更加方便了。",
    "专家认为，{topic}是一项长期任务，需要政府、企业和社会各方共同参与。",
    "数据显示，{city}去年的相关指标同比增长了{p}%，增速在全国同类城市中位居前列。",
    "为了让群众及时了解进展，{org}还开通了网上查询服务，并在各区设立了咨询窗口。",
    "{person}在调研时强调，要坚持问题导向，把群众最关心的事情办好办实。",
    "“我们会认真听取大家的意见。”{person}说。",
    "目前，{city}已有{n}所学校和{k}个社区参与了试点，覆盖人口超过{p}万人。",
    "此外，{org}将在年内出台配套措施，进一步完善{topic}的长效机制。",
    "有关负责人表示，这项工作得到了上级部门的大力支持，也受到了社会各界的广泛关注。",
]


def sentence(rng: random.Random, template: str = None) -> str:
    template = template or rng.choice(TEMPLATES)
    return template.format(city=rng.choice(CITIES), org=rng.choice(ORGS), topic=rng.choice(TOPICS),
                           person=rng.choice(PEOPLE), m=rng.randint(1, 12), d=rng.randint(1, 28),
                           n=rng.randint(3, 300), k=rng.randint(2, 90), p=rng.randint(2, 60))


def news_article(rng: random.Random, paragraphs: int = 4) -> str:
    """A news article: paragraphs of 2-3 sentences, one per line, no template used twice."""
    sizes = [rng.randint(2, 3) for _ in range(paragraphs)]
    templates = iter(rng.sample(TEMPLATES, sum(sizes)))
    return "\n".join("".join(sentence(rng, next(templates)) for _ in range(n)) for n in sizes)


def navigation_page(rng: random.Random) -> str:
    """Menus, links and a footer: short lines, no sentences."""
    menu = ["首页", "新闻中心", "政务公开", "办事服务", "互动交流", "专题专栏", "联系我们", "网站地图", "English"]
    lines = [" | ".join(rng.sample(menu, 6)) for _ in range(3)]
    lines += [f"{rng.choice(CITIES)}{rng.choice(ORGS)}" for _ in range(12)]
    lines += ["版权所有 © 2024 网站标识码 1234567890", "ICP备案号：京ICP备12345678号", "主办单位：办公厅"]
    return "\n".join(lines)


def spam_page(rng: random.Random) -> str:
    """Keyword stuffing: the same few phrases over and over."""
    words = ["免费下载", "最新电影", "高清在线观看", "点击进入", "立即注册"]
    return "\n".join("".join(rng.choice(words) for _ in range(12)) + "！" for _ in range(10))


def repeated_lines_page(rng: random.Random) -> str:
    """A page whose lines repeat (a template filled in once and pasted many times)."""
    line = sentence(rng)
    return "\n".join([line] * 8 + [sentence(rng) for _ in range(4)])


def mojibake(text: str) -> str:
    """UTF-8 bytes read as GBK: the commonest garbling of Chinese web text."""
    return text.encode("utf-8").decode("gbk", errors="replace")


JAPANESE = ("東京都は三月十日、新しい交通計画を発表しました。計画では、今後五年間でバスの路線を見直し、"
            "高齢者や子どもが利用しやすい街づくりを進めるとしています。\n"
            "都の担当者は「住民の声を聞きながら、安全で便利な交通網を整えたい」と話しました。"
            "また、駅の周辺では歩道の整備や自転車の駐車場の増設も行われる予定です。\n"
            "専門家は、人口の変化に合わせた交通の仕組みが必要だと指摘しています。"
            "計画の詳しい内容は、都のホームページで見ることができます。\n"
            "説明会は各区で開かれ、住民からはさまざまな意見が出されました。"
            "都は今年の秋までに計画をまとめ、来年の春から順に実施していく方針です。")


@lru_cache(maxsize=None)
def help_articles(min_chars: int = 200, min_cjk: float = 0.3):
    """The real documents: LibreOffice help pages in Chinese (data_tools/libreoffice_help_zh.py)
    of at least ``min_chars`` characters, at least ``min_cjk`` of them Chinese (most pages
    keep a few untranslated English lines). None without the package."""
    pages = help_pages()
    if pages is None:
        return None
    return tuple(p for p in pages
                 if len(p) >= min_chars and sum("\u4e00" <= c <= "\u9fff" for c in p) >= min_cjk * len(p))


def near_copy(rng: random.Random, text: str, edits: int) -> str:
    """``text`` with ``edits`` characters replaced by common ones."""
    chars = list(text)
    for p in rng.sample(range(len(chars)), min(edits, len(chars))):
        chars[p] = rng.choice("的一是在不了有和人这中大为上个国我以要他")
    return "".join(chars)


def with_pii(rng: random.Random, text: str) -> str:
    """``text`` with a contact line: a mobile number and a resident ID number (valid check character)."""
    body = f"{rng.randint(110000, 659999)}{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" \
           f"{rng.randint(0, 999):03d}"
    total = sum(int(c) * w for c, w in zip(body, (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)))
    mobile = f"1{rng.choice('3456789')}{rng.randint(0, 999999999):09d}"
    return f"{text}\n如有疑问，请联系本单位的技术支持人员，电话{mobile}，身份证号{body}{'10X98765432'[total % 11]}。"


def web_corpus(rng: random.Random, n_docs: int) -> List[dict]:
    """About ``n_docs`` documents: 70% real articles (some with personal data; news from the
    templates past the real ones), the rest pages to drop or duplicates, shuffled."""
    from data_tools.sample_corpus import english_sentences
    from data_tools.sample_corpus import news_article as english_article

    real = list(help_articles() or [])
    n_real = int(n_docs * 0.7)
    articles = rng.sample(real, min(n_real, len(real))) if real else []
    articles += [news_article(rng) for _ in range(n_real - len(articles))]
    docs = [{"text": with_pii(rng, a) if rng.random() < 0.1 else a, "kind": "article"} for a in articles]
    sents = english_sentences()
    makers = [("navigation", navigation_page), ("spam", spam_page), ("repeated_lines", repeated_lines_page),
              ("mojibake", lambda r: mojibake(r.choice(articles))),
              ("near_copy", lambda r: near_copy(r, r.choice(articles), r.randint(1, 4))),
              ("exact_copy", lambda r: r.choice(articles)), ("english", lambda r: english_article(r, sents)),
              ("japanese", lambda r: JAPANESE)]
    for i in range(n_docs - n_real):
        kind, make = makers[i % len(makers)]
        docs.append({"text": make(rng), "kind": kind})
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = f"zh-{i}"
    return docs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--docs", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    docs = web_corpus(random.Random(a.seed), a.docs)
    os.makedirs(a.output_dir, exist_ok=True)
    for shard in range(2):
        with open(os.path.join(a.output_dir, f"web-{shard}.jsonl"), "w", encoding="utf-8") as f:
            for d in docs[shard::2]:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    source = (f"the LibreOffice help ({PACKAGE} {package_version()}, {LICENSE})" if help_articles()
              else f"templates ({PACKAGE} is missing: run scripts/setup_env.sh)")
    print(f"wrote {len(docs)} documents to {a.output_dir}: articles from {source}, "
          f"{sum(d['kind'] != 'article' for d in docs)} pages to drop or duplicates")


if __name__ == "__main__":
    run_tool(main)
