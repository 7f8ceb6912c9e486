"""The terminal chat's rules (anticloud.chatrepl): lines in, actions out, no terminal and no model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anticloud.chatrepl import (
    CONTINUATION,
    EXIT_HINT,
    PROMPT,
    Leave,
    ModelInfo,
    Say,
    Send,
    Session,
    ShowModel,
    model_text,
    one_prompt,
    run_arguments,
)


def sent(action: object) -> list[dict[str, str]]:
    assert isinstance(action, Send), action
    return action.messages


def test_a_line_is_a_question_and_the_answer_joins_the_conversation() -> None:
    s = Session("m")
    assert sent(s.feed("Hello")) == [{"role": "user", "content": "Hello"}]
    s.answered("Hi there")
    assert sent(s.feed("How are you?")) == [{"role": "user", "content": "Hello"},
                                             {"role": "assistant", "content": "Hi there"},
                                             {"role": "user", "content": "How are you?"}]


def test_blank_lines_send_nothing() -> None:
    s = Session("m")
    assert s.feed("") is None and s.feed("   ") is None and s.turns == []


def test_triple_quotes_gather_several_lines_into_one_message() -> None:
    s = Session("m")
    assert s.feed('"""') is None and s.prompt == CONTINUATION
    assert s.feed("first line") is None
    assert s.feed("  indented second") is None
    assert sent(s.feed('last"""'))[-1]["content"] == "first line\n  indented second\nlast"
    assert s.prompt == PROMPT


def test_triple_quotes_open_and_close_on_lines_of_their_own_or_inline() -> None:
    s = Session("m")
    s.feed('"""one')
    assert sent(s.feed('"""'))[-1]["content"] == "one"
    s.answered("ok")
    assert sent(s.feed('"""all on one line"""'))[-1]["content"] == "all on one line"
    s.answered("ok")
    assert s.feed('""""""') is None  # an empty message sends nothing


def test_the_system_message_comes_first_and_survives_clear() -> None:
    s = Session("m")
    assert s.feed("/set system  You answer   in French.") == Say("Set system message.")
    assert s.system == "You answer   in French."  # the text as typed
    s.feed("Hello")
    s.answered("Bonjour")
    assert s.feed("/clear") == Say("Cleared session context")
    assert sent(s.feed("Again")) == [{"role": "system", "content": "You answer   in French."},
                                     {"role": "user", "content": "Again"}]
    assert s.feed("/show system") == Say("You answer   in French.")


def test_a_system_message_of_several_lines() -> None:
    s = Session("m")
    assert s.feed('/set system """Be brief.') is None and s.prompt == CONTINUATION
    assert s.feed('Be kind."""') == Say("Set system message.")
    assert s.system == "Be brief.\nBe kind." and s.turns == []


def test_set_parameter_takes_what_the_api_contract_takes() -> None:
    s = Session("m")
    assert s.feed("/set parameter temperature 0.2") == Say("Set parameter 'temperature' to '0.2'")
    assert s.feed("/set parameter top_k 20") == Say("Set parameter 'top_k' to '20'")
    assert s.feed("/set parameter stop END ###") == Say("Set parameter 'stop' to 'END, ###'")
    for name, value in (("top_p", "0.5"), ("num_predict", "-1"), ("seed", "42"), ("repeat_penalty", "1.3")):
        assert isinstance(s.feed(f"/set parameter {name} {value}"), Say)
    assert s.options == {"temperature": 0.2, "top_k": 20, "stop": ["END", "###"], "top_p": 0.5,
                         "num_predict": -1, "seed": 42, "repeat_penalty": 1.3}


@pytest.mark.parametrize(("line", "says"), [
    ("/set parameter temperature hot", "'hot' is not a number"),
    ("/set parameter top_k 2.5", "'2.5' is not an integer"),
    ("/set parameter temperature 3", "3.0 is greater than the maximum of 2"),
    ("/set parameter top_p 0.5 0.6", "give one value"),
    ("/set parameter nonesuch 1", "unknown parameter 'nonesuch'"),
    ("/set parameter num_thread 4", "anticloud does not apply num_thread"),
])
def test_a_parameter_the_contract_refuses_is_not_set(line: str, says: str) -> None:
    s = Session("m")
    said = s.feed(line)
    assert isinstance(said, Say) and said.text.startswith("Couldn't set parameter") and says in said.text
    assert s.options == {}


def test_set_parameter_without_a_value_lists_the_parameters() -> None:
    said = Session("m").feed("/set parameter temperature")
    assert isinstance(said, Say) and said.err and "/set parameter num_predict" in said.text


def test_show_parameters_lists_those_set_and_the_defaults() -> None:
    s = Session("m")
    s.feed("/set parameter temperature 0")
    said = s.feed("/show parameters")
    assert isinstance(said, Say)
    mine, defaults = said.text.split("Defaults for the others:")
    assert "temperature          0.0" in mine and "temperature" not in defaults and "top_k" in defaults


def test_show_info_and_template_ask_the_backend() -> None:
    s = Session("m")
    assert s.feed("/show info") == ShowModel("info") and s.feed("/show template") == ShowModel("template")
    info = ModelInfo("m", "sha3-256:ab", 2_000_000, ("sha3-256:cd",))
    assert "sha3-256:ab" in model_text(info, "info") and "2.0 MB" in model_text(info, "info")
    assert model_text(info, "template") == "chat template  sha3-256:cd"
    assert "no chat template" in model_text(ModelInfo("m", "x", 0, ()), "template")


@pytest.mark.parametrize("line", ["/bye", "/exit", "/bye now"])
def test_bye_leaves(line: str) -> None:
    assert Session("m").feed(line) == Leave()


@pytest.mark.parametrize(("line", "words"), [("/?", "/clear"), ("/help", "/bye"), ("/? set", "/set system"),
                                             ("/help show", "/show info"), ("/? shortcuts", "Ctrl + c"),
                                             ("/set", "/set parameter"), ("/show", "/show parameters")])
def test_help_goes_to_standard_error(line: str, words: str) -> None:
    said = Session("m").feed(line)
    assert isinstance(said, Say) and said.err and words in said.text


@pytest.mark.parametrize(("line", "says"), [("/nonesuch", "Unknown command '/nonesuch'"),
                                            ("/settings", "Unknown command '/settings'"),
                                            ("/set colour", "Unknown command '/set colour'"),
                                            ("/show licence", "Unknown command '/show licence'")])
def test_unknown_commands_say_so_and_send_nothing(line: str, says: str) -> None:
    s = Session("m")
    said = s.feed(line)
    assert isinstance(said, Say) and said.text.startswith(says) and s.turns == []


def test_history_is_never_written() -> None:
    said = Session("m").feed("/set history")
    assert isinstance(said, Say) and "no history file" in said.text


def test_an_interrupted_answer_is_kept_as_far_as_it_was_shown() -> None:
    s = Session("m")
    s.feed("Tell a story")
    s.interrupted("Once upon")
    assert s.turns[-1] == {"role": "assistant", "content": "Once upon"}
    s.feed("Another")
    s.interrupted("")  # stopped before a word: the question is taken back
    s.feed("Refused")
    s.unanswered()
    assert [t["role"] for t in s.turns] == ["user", "assistant"]


def test_ctrl_c_at_the_prompt_says_how_to_leave_or_drops_a_multi_line_input() -> None:
    s = Session("m")
    assert s.interrupt() == EXIT_HINT
    s.feed('"""half')
    assert s.interrupt() is None and s.prompt == PROMPT
    assert sent(s.feed("whole"))[-1]["content"] == "whole"


LINES = st.one_of(st.text(max_size=12), st.sampled_from(['"""', 'a"""', '"""b', "/clear", "/set system s",
                                                         '/set system """x', "/set parameter seed 1", "/show",
                                                         "/nonesuch", "", "hello"]))
OUTCOMES = st.sampled_from(["answered", "interrupted", "interrupted-early", "unanswered"])


@given(st.lists(st.tuples(LINES, OUTCOMES), max_size=30))
def test_what_is_sent_is_always_a_system_message_then_alternating_turns(steps: list[tuple[str, str]]) -> None:
    s = Session("m")
    for line, outcome in steps:
        action = s.feed(line)
        if isinstance(action, Send):
            roles = [m["role"] for m in action.messages]
            turns = roles[1:] if roles[:1] == ["system"] else roles
            assert "system" not in turns
            assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"]
            {"answered": lambda: s.answered("reply"), "interrupted": lambda: s.interrupted("part"),
             "interrupted-early": lambda: s.interrupted(""), "unanswered": s.unanswered}[outcome]()


def test_run_takes_a_model_then_a_prompt_and_one_word_is_a_model_only_if_stored() -> None:
    stored = {"smollm2-135m", "gemma3-270m"}
    assert run_arguments((), stored, "gemma3-270m") == ("gemma3-270m", None)
    assert run_arguments(("smollm2-135m",), stored, "gemma3-270m") == ("smollm2-135m", None)
    assert run_arguments(("smollm2-135m:latest",), stored, "gemma3-270m") == ("smollm2-135m", None)
    assert run_arguments(("Hello",), stored, "gemma3-270m") == ("gemma3-270m", "Hello")
    assert run_arguments(("smollm2-135m", "Hi"), stored, "gemma3-270m") == ("smollm2-135m", "Hi")
    assert run_arguments(("nonesuch", "Hi"), stored, "gemma3-270m") == ("nonesuch", "Hi")  # refused later


def test_piped_text_comes_before_the_prompt() -> None:
    assert one_prompt("some text\n", "Summarise:") == "some text\n\nSummarise:"
    assert one_prompt(None, "Hi") == "Hi" and one_prompt("Hi", None) == "Hi"
    assert one_prompt("", None) is None and one_prompt("\n", "  ") is None
