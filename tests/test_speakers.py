"""The speaker mapping (`speakers` parameter, `--speakers`): every accepted form, and every error names
`speakers` and the speaker. Shared by the Dify tool and the CLI through audio.options.speakers."""

from __future__ import annotations

import json

import pytest

from audio import options, script
from audio.errors import InvalidInput
from audio.model import SpeakerVoice


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Host=alloy", {"host": SpeakerVoice("alloy")}),
        ("Host:alloy", {"host": SpeakerVoice("alloy")}),  # the older Name:voice form
        ("Host=alloy; Guest=nova, Expert=echo\nNarrator=fable",
         {"host": SpeakerVoice("alloy"), "guest": SpeakerVoice("nova"), "expert": SpeakerVoice("echo"),
          "narrator": SpeakerVoice("fable")}),
        ("Host=alloy; Guest=2:nova@1.2; *=echo",
         {"host": SpeakerVoice("alloy"), "guest": SpeakerVoice("nova", 2, 1.2), "*": SpeakerVoice("echo")}),
        ("Guest=2:", {"guest": SpeakerVoice(None, 2)}),  # model_2 with its selector's voice
        ("Guest = 3 : en-gb+f3 @ 0.5", {"guest": SpeakerVoice("en-gb+f3", 3, 0.5)}),
        ("Guest=1:nova", {"guest": SpeakerVoice("nova", 1)}),
        ("Guest=nova@2", {"guest": SpeakerVoice("nova", 1, 2.0)}),
        ("Guest=@1.5", {"guest": SpeakerVoice(None, 1, 1.5)}),  # the default voice, faster
        ("Guest:2:nova", {"guest": SpeakerVoice("nova", 2)}),
        ("Dr Who=en-us", {"dr who": SpeakerVoice("en-us")}),
        ("HOST=alloy", {"host": SpeakerVoice("alloy")}),
        ("", {}),
        ("  ;  ", {}),
        (None, {}),
        ('{"Host": "alloy"}', {"host": SpeakerVoice("alloy")}),
        ('{"Guest": "2:nova@1.2"}', {"guest": SpeakerVoice("nova", 2, 1.2)}),
        ('{"Guest": {"model": 2, "voice": "nova", "speed": 1.2}}', {"guest": SpeakerVoice("nova", 2, 1.2)}),
        ('{"Guest": {"model": "model_3"}}', {"guest": SpeakerVoice(None, 3)}),
        ('{"Guest": {"model": "2", "speed": "0.8"}}', {"guest": SpeakerVoice(None, 2, 0.8)}),
        ('{"Guest": {"voice": "nova"}, "*": "echo"}', {"guest": SpeakerVoice("nova"), "*": SpeakerVoice("echo")}),
        ({"Guest": {"model": 2, "voice": "nova"}}, {"guest": SpeakerVoice("nova", 2)}),
    ],
)
def test_accepted_forms(value, expected):
    assert options.speakers(value) == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("Host", ["'Host'", "Name=voice"]),
        ("Host=", ["Host", "no voice"]),
        ("=alloy", ["name is empty"]),
        ("Guest=4:nova", ["Guest", "model '4'", "1 (model), 2 (model_2), 3 (model_3)"]),
        ("Guest=0:nova", ["Guest", "model '0'"]),
        ("Guest=nova@2.5", ["Guest", "2.5", "0.5 to 2"]),
        ("Guest=nova@0.4", ["Guest", "0.4", "0.5 to 2"]),
        ("Guest=nova@fast", ["Guest", "'fast'", "not a number"]),
        ("Guest=nova@", ["Guest", "not a number"]),
        ("Guest=nova@nan", ["Guest", "out of range"]),
        ('{"Guest": "nova"', ["invalid JSON"]),
        ('["Host", "alloy"]', ["must be an object"]),
        ('{"Guest": 2}', ["Guest", "not a voice"]),
        ('{"Guest": {"model": 4}}', ["Guest", "model 4"]),
        ('{"Guest": {"model": true}}', ["Guest", "model True"]),
        ('{"Guest": {"model": 2, "speed": 3}}', ["Guest", "speed 3", "0.5 to 2"]),
        ('{"Guest": {"model": 2, "voice": 7}}', ["Guest", "voice must be a string"]),
        ('{"Guest": {"modle": 2}}', ["Guest", "unknown field 'modle'"]),
        ('{"Guest": "5:nova"}', ["Guest", "model '5'"]),
        ("Guest=" + "v" * 129, ["Guest", "longer than 128"]),
        ("N" * 65 + "=alloy", ["longer than 64"]),
    ],
)
def test_errors_name_speakers_and_the_speaker(value, words):
    with pytest.raises(InvalidInput) as err:
        options.speakers(value)
    assert err.value.param == "speakers"
    for word in words:
        assert word in str(err.value), str(err.value)


def test_json_and_text_forms_agree():
    text = options.speakers("Host=alloy; Guest=2:nova@1.2; *=3:")
    as_strings = options.speakers(json.dumps({"Host": "alloy", "Guest": "2:nova@1.2", "*": "3:"}))
    as_objects = options.speakers(json.dumps({
        "Host": {"voice": "alloy"}, "Guest": {"model": 2, "voice": "nova", "speed": 1.2}, "*": {"model": 3},
    }))  # fmt: skip
    assert text == as_strings == as_objects


def test_planning_carries_model_speed_and_default_voices():
    mapping = options.speakers("Host=alloy; Guest=2:@1.25; Expert=3:echo@0.8")
    p = script.plan(
        "# Show\n\nHost: Welcome.\nGuest: Thanks.\nExpert: Indeed.\n\nHost: Bye.",
        voice="onyx",
        speakers=mapping,
        model_voices={2: "female-1", 3: None},
    )
    got = [(r.text, r.speaker, r.model, r.voice, r.speed) for r in p.requests]
    assert got == [
        ("Show", None, 1, "onyx", None),  # headings and narration: the default voice of model 1
        ("Welcome.", "Host", 1, "alloy", None),
        ("Thanks.", "Guest", 2, "female-1", 1.25),  # no voice given: model_2's own (its selector's) voice
        ("Indeed.", "Expert", 3, "echo", 0.8),
        ("Bye.", "Host", 1, "alloy", None),
    ]


def test_a_fallback_to_another_model_reads_the_narration_when_no_voice_is_set():
    p = script.plan("Intro.\n\nHost: Hi.\nGuest: Hello.", voice=None, speakers=options.speakers("Host=alloy; *=2:"),
                    model_voices={2: "nova"})
    assert [(r.speaker, r.model, r.voice) for r in p.requests] == [(None, 2, "nova"), ("Host", 1, "alloy"),
                                                                  ("Guest", 2, "nova")]


def test_plain_voice_names_still_work_in_plan():
    p = script.plan("Host: Hi.\nGuest: Hello.", speakers={"host": "alloy", "guest": "2:nova"})
    # a plain string in plan() is a voice name, taken as written (parsing is options.speakers' job)
    assert [(r.model, r.voice, r.speed) for r in p.requests] == [(1, "alloy", None), (1, "2:nova", None)]
