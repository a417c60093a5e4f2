#!/bin/sh
# Uploads FILE in parts through a multipart grant's Secret mounted at GRANT
# (default /grant), with curl and jq, then completes the upload:
#
#   sh multipart-curl.sh FILE [GRANT]
#
# Part N's URL is the template in parts.url with {partNumber} = N and
# {signature} = parts.signatures[N-1]; each part is a plain PUT (curl -T)
# whose ETag header goes into the completion's XML. S3 can answer the
# completion 200 with an <Error> in the body, so the body is checked too.
set -eu
file=$1
grant=${2:-/grant}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
size=$(jq -r .partSize "$grant/parts")
count=$(jq -r .count "$grant/parts")
split -b "$size" -a 5 -d "$file" "$tmp/part."
[ -e "$tmp/part.00000" ] || : > "$tmp/part.00000"   # an empty file is one empty part
n=0
for part in "$tmp"/part.*; do
  n=$((n + 1))
  [ "$n" -le "$count" ] || { echo "$file has more than $count parts of $size bytes" >&2; exit 1; }
  # Read at the moment of use: a renewal replaces the signatures.
  sig=$(jq -r ".signatures[$((n - 1))]" "$grant/parts")
  url=$(jq -r .url "$grant/parts" | sed "s/{partNumber}/$n/; s/{signature}/$sig/")
  etag=$(curl --fail-with-body -sS -T "$part" -D - -o "$tmp/answer" "$url" |
    tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p') || { cat "$tmp/answer" >&2; exit 1; }
  printf '<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>' "$n" "$etag" >> "$tmp/parts.xml"
done
printf '<CompleteMultipartUpload>%s</CompleteMultipartUpload>' "$(cat "$tmp/parts.xml")" > "$tmp/complete.xml"
answer=$(curl --fail-with-body -sS -X POST -H 'Content-Type: application/xml' \
  --data-binary @"$tmp/complete.xml" "$(cat "$grant/completeUrl")")
case $answer in
  *"<Error>"*) echo "complete: $answer" >&2; exit 1 ;;
esac
echo uploaded >&2
