"""The Korean prompts a chat model gets (a question of one kind about one or two passages, and
the answerability check), and the robust reading of its replies."""

from __future__ import annotations

import json
import re

PROMPT_VERSION = "ko-1"
"""Recorded with every generated question; change it whenever a prompt's text changes."""
KINDS = ("factoid", "concept", "two_hop")

_SYSTEM = ("당신은 한국어 문서로 검색 시스템을 평가하기 위한 질문을 만드는 도우미입니다. "
           "반드시 JSON 객체 하나만 출력하고, 다른 설명은 쓰지 마세요.")
_RULES = "\n".join([
    "규칙:",
    "- 질문은 이 글을 본 적 없는 사람이 검색창에 입력하듯이, 그 자체로 뜻이 통하게 쓰세요.",
    "- '이 글', '위 문서', '본문', '주어진 자료' 같은 표현을 쓰지 말고, "
    "필요한 고유명사(기관, 제도, 사건, 제품 이름)를 질문에 직접 넣으세요.",
    "- 답은 글의 내용에만 근거해야 합니다.",
    '- 물을 만한 내용이 없으면 {"question": "", "answer": ""}를 출력하세요.',
    '출력 형식: {"question": "질문", "answer": "답"}'])
_ASK = {
    "factoid": ("다음 글에 명시된 구체적인 사실(이름, 수치, 날짜, 장소, 조건 등) 하나를 묻는 질문과 "
                "짧은 답을 만드세요."),
    "concept": ("다음 글이 설명하는 개념, 이유, 절차 또는 목적을 묻는 질문(무엇을 뜻하는지, 왜, 어떻게)과 "
                "두세 문장의 답을 만드세요."),
    "two_hop": ("다음 두 글을 모두 읽어야 답할 수 있는 질문 하나와 답을 만드세요. "
                "질문은 글 1의 정보와 글 2의 정보를 연결해야 하며, 한 글만으로는 답할 수 없어야 합니다. "
                "질문에 '글 1', '글 2'라는 말은 쓰지 마세요."),
}
_CHECK_SYSTEM = "당신은 글이 질문에 답하는지 판정하는 평가자입니다. '예' 또는 '아니오' 한 단어로만 답하세요."
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)
_QUESTION_KEYS = ("question", "질문")
_ANSWER_KEYS = ("answer", "답", "답변")


def question_messages(kind: str, passages: list[str]) -> list[dict[str, str]]:
    """The chat messages that ask for one question of `kind` with its answer, as JSON."""
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"{_ASK[kind]}\n{_RULES}\n\n{_passages(passages)}"}]


def check_messages(question: str, passages: list[str]) -> list[dict[str, str]]:
    """The chat messages that ask whether the passages answer the question: 예 or 아니오."""
    return [{"role": "system", "content": _CHECK_SYSTEM},
            {"role": "user", "content": f"{_passages(passages)}\n\n질문: {question}\n\n"
             "위 글의 내용만으로 이 질문에 답할 수 있습니까? '예' 또는 '아니오'로만 답하세요."}]


def _passages(passages: list[str]) -> str:
    if len(passages) == 1:
        return f'글:\n"""\n{passages[0]}\n"""'
    return "\n\n".join(f'글 {i}:\n"""\n{text}\n"""' for i, text in enumerate(passages, 1))


def parse_qa(reply: str) -> tuple[str, str] | None:
    """The (question, answer) of a reply, or None when it holds no JSON object with a question:
    a model's thinking block, code fences and text around the object are skipped; the first
    object with a question key (question or 질문) counts. A declined one is ("", "")."""
    text = _without_thinking(reply)
    decoder = json.JSONDecoder()
    for found in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, found.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        question = next((value[k] for k in _QUESTION_KEYS if k in value), None)
        answer = next((value[k] for k in _ANSWER_KEYS if k in value), "")
        if isinstance(question, str) and isinstance(answer, (str, int, float)):
            return question.strip(), str(answer).strip()
    return None


def parse_verdict(reply: str) -> bool | None:
    """Whether a check's reply says yes (예, 네, yes, true) or no (아니오, no, false); None when neither."""
    words = re.findall(r"[가-힣]+|[a-z]+", _without_thinking(reply).lower())
    if not words:
        return None
    first = words[0]
    if first.startswith("아니") or first in ("no", "false"):
        return False
    if first in ("예", "네", "yes", "true") or first.startswith("가능"):
        return True
    return None


def _without_thinking(reply: str) -> str:
    """The reply after any <think>...</think> block (reasoning models), an unclosed one included."""
    text = _THINKING.sub("", reply)
    return text.split("</think>", 1)[-1] if "</think>" in text else text
