"""Sends chat completions with the official OpenAI Python client, as an application would: a long
conversation (so the request body names its model only after several KiB of messages) and a real
API key header. Prints how many completions of each kind finished.

Usage: openai_client.py PORT MODEL COUNT [--stream]
"""

import sys

from openai import OpenAI


def main():
    port, model, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stream = "--stream" in sys.argv[4:]
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test-0123456789abcdef", max_retries=0)
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for turn in range(20):
        messages.append({"role": "user", "content": f"Question {turn}: " + "tell me more " * 20})
        messages.append({"role": "assistant", "content": f"Answer {turn}: " + "here is more " * 20})
    messages.append({"role": "user", "content": "And finally?"})
    done = 0
    for _ in range(count):
        if stream:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(model=model, messages=messages, stream=True)
            )
        else:
            text = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
        assert text == "Hello, world!", text
        done += 1
    print(done)


if __name__ == "__main__":
    main()
