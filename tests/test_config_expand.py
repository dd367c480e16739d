"""fim.app.expand: only $NAME and ${NAME} are expanded; nothing can run a host command."""

from __future__ import annotations

import pytest

from fim.app.expand import expand

ENV = {"HOME": "/home/u", "META": "NAME", "A_1": "x y", "EMPTY": ""}


@pytest.mark.parametrize(("text", "want"), [
    ("plain", "plain"),
    ("$HOME/Music", "/home/u/Music"),
    ("${HOME}x", "/home/ux"),
    ("$HOMEx", ""),
    ("${A_1}", "x y"),
    ("a=$A_1 b", "a=x y b"),
    ("$UNSET.", "."),
    ("${EMPTY}|$EMPTY", "|"),
    ("$(echo $META)", "$(echo $META)"),
    ("$(echo $(id) $META)-$META", "$(echo $(id) $META)-NAME"),
    ("`id $HOME` $HOME", "`id $HOME` /home/u"),
    ("$(unclosed $HOME", "$(unclosed $HOME"),
    ("`unclosed $HOME", "`unclosed $HOME"),
    ("~/x *.txt 'q' \"$HOME\"", "~/x *.txt 'q' \"/home/u\""),
    ("$ $1 $@ $? $$ ${bad-name} ${HOME", "$ $1 $@ $? $$ ${bad-name} ${HOME"),
    ("${}", "${}"),
    ("[myapp] \\W > ", "[myapp] \\W > "),
    ("$", "$"),
])
def test_expand(text: str, want: str) -> None:
    assert expand(text, ENV) == want
