# Run with: python3 -m unittest handler_test (in this directory).
import unittest

from handler import handle


class Event:
    def __init__(self, body=b"", method="POST", path="/"):
        self.body, self.method, self.path = body, method, path
        self.headers, self.query = {}, {}


class HandlerTest(unittest.TestCase):
    def test_greets_the_name_in_the_body(self):
        result = handle(Event(b"hi\n"), None)
        self.assertEqual(result["statusCode"], 200)
        self.assertEqual(result["body"], "Hello, hi!\n")

    def test_greets_the_world_without_a_body(self):
        self.assertEqual(handle(Event(), None)["body"], "Hello, world!\n")


if __name__ == "__main__":
    unittest.main()
