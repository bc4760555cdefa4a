"""GenerationService with n choices: each choice framed and stopped on its own, the stream's last message the
only final one, and a request whose choices have all ended cancelled in the engine (no Triton: a scripted
engine stands in for the engine, the real service runs)."""
import queue
import threading

import numpy as np

from nanovl.engine.request import EngineOutput, SamplingParams
from nanovl.serving.service import GenerationService


class ScriptedEngine:
    """Emits the outputs it is given on submit; records cancels."""

    supports_choices = True

    def __init__(self, on_output, script):
        self.on_output, self.script, self.cancelled = on_output, script, []

    def submit(self, request):
        for out in self.script:
            out.request_id = request.request_id
            self.on_output(out)

    def cancel(self, request_id):
        self.cancelled.append(request_id)

    def shutdown(self):
        pass


def run(token_bytes, script, sampling):
    sent, done = queue.SimpleQueue(), threading.Event()
    engines = []

    def send(target, message):
        sent.put(message)
        if message.final:
            done.set()

    def factory(on_output):
        engines.append(ScriptedEngine(on_output, script))
        return engines[0]

    service = GenerationService(factory, token_bytes, send)
    key = service.submit("stream", np.arange(5, dtype=np.int32), sampling)
    assert done.wait(10)
    service.close()
    messages = []
    while not sent.empty():
        messages.append(sent.get())
    return key, messages, engines[0]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_a_stop_string_ends_its_choice_alone_and_the_last_choice_ends_the_stream(token_bytes, tokenizer):
    stop_here = ids(tokenizer, "one two STOP three")
    other = ids(tokenizer, "four five six")
    script = [EngineOutput("", stop_here, None, 5, len(stop_here), sequence_index=0, cached_tokens=4),
              EngineOutput("", other, "length", 5, len(other), sequence_index=1, cached_tokens=4),
              EngineOutput("", ids(tokenizer, " seven"), "length", 5, len(stop_here) + 1, sequence_index=0,
                           cached_tokens=4)]
    key, messages, engine = run(token_bytes, script, SamplingParams(n=2, stop=("STOP",)))
    text = {0: b"", 1: b""}
    for m in messages:
        data = b"".join(token_bytes.table[t] for t in m.output_ids[m.new_offset:])
        text[m.sequence_index] += data[:len(data) - m.trim_bytes]
    text = {i: t.decode() for i, t in text.items()}
    assert text[0].rstrip() == "one two" and text[1] == "four five six"
    assert [m.final for m in messages] == [False] * (len(messages) - 1) + [True]
    finishes = {m.sequence_index: m.finish_reason for m in messages if m.finish_reason}
    assert finishes == {0: "stop", 1: "length"} and messages[0].cached_tokens == 4
    assert engine.cancelled == [key]   # the stopped choice would decode on otherwise
