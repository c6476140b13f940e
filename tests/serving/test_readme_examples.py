"""The README's curl examples, run exactly as printed against a real server, answers checked.

The examples live in README.md in a fenced block right after a ``<!-- readme-curl -->`` line
(any other ``curl ... $EP`` line in the README is run too). Each command starts at a line
beginning with ``curl`` and goes on over lines ending in a backslash; it runs through bash with
``EP`` set to a server of the demo's kind (tiny-phi-3 and one adapter tuned on the demo's data).
A comment line after a command showing a JSON value is its expected answer, abbreviated: every
key it shows must be in the real answer with that value (lists item by item), and a string ending
in ``…`` only has to start with what comes before it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from tests.serving.conftest import REPO, RunningServer

MARKER = "<!-- readme-curl -->"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass
class Example:
    command: str
    expected: Any = None  # the JSON value in the comment after the command, if any
    has_expected: bool = False


def marked_block(readme: str) -> str:
    index = readme.find(MARKER)
    assert index >= 0, f"README.md has no '{MARKER}' line before the curl examples of the endpoint"
    match = FENCE.search(readme, index)
    assert match and not readme[index + len(MARKER):match.start()].strip(), f"'{MARKER}' must come right before a ``` block"
    return match.group(1)


def parse(block: str) -> list[Example]:
    examples: list[Example] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("curl "):
            command = [line]
            while command[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            examples.append(Example("\n".join(command)))
        elif examples and line.lstrip().startswith("#") and not examples[-1].has_expected:
            text = line.lstrip()[1:].strip()
            if text[:1] in "{[":
                examples[-1].expected, examples[-1].has_expected = json.loads(text), True
        i += 1
    return examples


def readme_examples() -> list[Example]:
    readme = (REPO / "README.md").read_text()
    examples = parse(marked_block(readme))
    marked = {e.command for e in examples}
    for match in FENCE.finditer(readme):  # curl lines against the endpoint elsewhere in the README
        examples += [e for e in parse(match.group(1)) if "$EP" in e.command and e.command not in marked]
    return examples


def matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) >= len(expected) and all(map(matches, expected, actual))
    if isinstance(expected, str) and expected.endswith("…"):
        return isinstance(actual, str) and actual.startswith(expected[:-1])
    return expected == actual


def test_the_parser_reads_commands_continuations_and_abbreviated_answers() -> None:
    block = ("EP=http://127.0.0.1:PORT\n"
             "curl -s $EP/chat -d '{\"prompt\": \"Hi\"}'\n"
             "# {\"Result\": \"Hello…\"}\n"
             "curl -s $EP/v1/chat/completions \\\n  -d '{}'\n"
             "curl -s $EP/v1/models   # the models\n")
    examples = parse(block)
    assert [e.command for e in examples] == ["curl -s $EP/chat -d '{\"prompt\": \"Hi\"}'",
                                             "curl -s $EP/v1/chat/completions \\\n  -d '{}'",
                                             "curl -s $EP/v1/models   # the models"]
    assert examples[0].expected == {"Result": "Hello…"} and not examples[1].has_expected
    assert matches({"Result": "Hello…"}, {"Result": "Hello there"}) and not matches({"Result": "Hello…"}, {"Result": "Hi"})
    assert matches({"a": [{"b": 1}]}, {"a": [{"b": 1, "c": 2}], "d": 3}) and not matches({"a": [{"b": 1}]}, {"a": [{"b": 2}]})


def test_readme_has_the_marked_curl_block_with_chat_and_openai_examples() -> None:
    examples = parse(marked_block((REPO / "README.md").read_text()))
    commands = " ".join(e.command for e in examples)
    for path in ("$EP/chat", "$EP/v1/chat/completions", "$EP/v1/models"):
        assert path in commands, f"the README's curl block has no example of {path}"
    assert all("$EP" in e.command for e in examples)
    assert any(e.has_expected for e in examples), "show at least one answer in the README's curl block"


def test_readme_curl_examples_answer_as_printed(tuned_server: RunningServer) -> None:
    examples = readme_examples()
    assert examples
    for example in examples:
        result = subprocess.run(["bash", "-c", example.command], capture_output=True, text=True, timeout=180,
                                env={**os.environ, "EP": tuned_server.url})
        assert result.returncode == 0, f"{example.command}\nexit {result.returncode}: {result.stderr}"
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"{example.command}\ndid not answer JSON: {result.stdout[:500]!r}")
        assert "error" not in answer and "detail" not in answer, f"{example.command}\nanswered {answer}"
        if example.has_expected:
            assert matches(example.expected, answer), f"{example.command}\nREADME shows {example.expected}\ngot {answer}"
