#!/bin/sh
# {{name}}: a classic function. Each request runs this script: the body is on stdin, the
# response is what it prints; the request's headers are in Http_* variables (Http_Method,
# Http_Path, Http_Query, Http_Content_Type, ...). A non-zero exit answers 500.
name=$(cat | tr -d '\n')
echo "Hello, ${name:-world}!"
