// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// JDK only (java.net.http), run as a single source file, no build tool:
//
//   java Consumer.java [/grant] < file          # a PUT grant: uploads stdin
//   java Consumer.java [/grant] > file          # a GET grant: writes the object
//   java Consumer.java [/grant] [NAME] < file   # a POST grant: uploads stdin as
//                                               # the form's file NAME (upload.bin)
//   java Consumer.java [/grant] < file          # a multipart grant: uploads stdin
//                                               # in parts, then completes it
//
// Reads the files at the moment of use, so a renewed URL is picked up
// without a restart.
//
// The rule every example consumer follows: send every header in `headers`
// exactly, except the one the HTTP client derives from the body itself,
// `content-length`. HttpClient refuses to have it set by hand ("restricted
// header name") and sends the length of the body publisher instead, so the
// body must have exactly that many bytes (a grant that pins contentLength
// signed it); that is checked before anything is sent. The grant never
// carries the other restricted headers (host, connection, expect, upgrade).
//
// A POST grant is a form: `url` is its action and `fields` a JSON object of
// fields, sent as multipart/form-data in order, then the file last as
// `file`. S3 answers 204 or the grant's successActionStatus.
//
// A multipart grant (its Secret has `uploadId`) has `parts`: JSON {"count",
// "partSize", "url", "signatures"}; part N's URL is `url` with {partNumber}
// replaced by N and {signature} by signatures[N-1]. Parts are read from stdin
// one at a time (never the whole file), each sent as a plain PUT and tried
// up to 3 times with `parts` read again, so a renewal during a long upload
// is picked up. completeUrl takes a POST of the part numbers and ETags; S3
// may answer it 200 with an <Error> in the body, so the body is checked too.
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Consumer {
    // HTTP/1.1: S3 stores do not all speak h2c, and an upgrade attempt adds headers.
    static final HttpClient CLIENT = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
    static final int ATTEMPTS = 3;

    public static void main(String[] args) throws Exception {
        Path grant = Path.of(args.length > 0 ? args[0] : "/grant");
        if (Files.exists(grant.resolve("uploadId"))) {
            multipart(grant);
            System.err.println("uploaded");
            return;
        }
        if (read(grant, "method").equals("POST")) {
            post(grant, args.length > 1 ? args[1] : "upload.bin");
            System.err.println("uploaded");
            return;
        }
        byte[] body = new byte[0];
        if (read(grant, "method").equals("PUT")) {
            body = System.in.readAllBytes();
        }
        // Read at the moment of use: the kubelet replaces the files on renewal.
        String method = read(grant, "method");
        String url = read(grant, "url");
        Map<String, String> headers = parseObject(read(grant, "headers"));

        // The client derives Content-Length from the body: check it, do not set it.
        String pinned = headers.remove("content-length");
        if (pinned != null && !pinned.equals(Integer.toString(body.length))) {
            fail("the body is " + body.length + " bytes but the grant signed content-length "
                    + pinned + "; nothing was sent");
        }
        HttpRequest.BodyPublisher publisher = method.equals("PUT")
                ? HttpRequest.BodyPublishers.ofByteArray(body)
                : HttpRequest.BodyPublishers.noBody();
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(url)).method(method, publisher);
        headers.forEach(request::header);

        HttpResponse<byte[]> response = send(request.build());
        if (response.statusCode() / 100 != 2) {
            fail(response.statusCode() + ": " + new String(response.body(), StandardCharsets.UTF_8));
        }
        if (method.equals("PUT")) {
            System.err.println("uploaded");
        } else {
            System.out.write(response.body());
            System.out.flush();
        }
    }

    /** Sends a request; a network failure is the consumer's error. */
    static HttpResponse<byte[]> send(HttpRequest request) throws InterruptedException {
        try {
            return CLIENT.send(request, HttpResponse.BodyHandlers.ofByteArray());
        } catch (IOException e) {
            fail(e.toString());
            return null;
        }
    }

    /** S3's <Error><Code>…</Code><Message>…</Message></Error> as one line. */
    static String s3Error(int status, byte[] body) {
        String text = new String(body, StandardCharsets.UTF_8);
        Matcher code = Pattern.compile("<Code>([^<]*)</Code>").matcher(text);
        Matcher message = Pattern.compile("<Message>([^<]*)</Message>").matcher(text);
        if (code.find()) {
            return status + " " + code.group(1) + ": " + (message.find() ? message.group(1) : "");
        }
        return status + ": " + text;
    }

    static void post(Path grant, String name) throws Exception {
        Map<String, String> fields = parseObject(read(grant, "fields"));
        byte[] file = System.in.readAllBytes();
        String boundary = "upload-grant-" + UUID.randomUUID();
        ByteArrayOutputStream form = new ByteArrayOutputStream();
        for (Map.Entry<String, String> field : fields.entrySet()) {
            form.writeBytes(("--" + boundary + "\r\nContent-Disposition: form-data; name=\"" + field.getKey()
                    + "\"\r\n\r\n" + field.getValue() + "\r\n").getBytes(StandardCharsets.UTF_8));
        }
        // The file name quoted as browsers do (WHATWG): ", CR and LF escaped.
        String quoted = name.replace("\"", "%22").replace("\r", "%0D").replace("\n", "%0A");
        form.writeBytes(("--" + boundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
                + quoted + "\"\r\nContent-Type: application/octet-stream\r\n\r\n").getBytes(StandardCharsets.UTF_8));
        form.writeBytes(file);
        form.writeBytes(("\r\n--" + boundary + "--\r\n").getBytes(StandardCharsets.UTF_8));
        HttpRequest request = HttpRequest.newBuilder(URI.create(read(grant, "url")))
                .header("Content-Type", "multipart/form-data; boundary=" + boundary)
                .POST(HttpRequest.BodyPublishers.ofByteArray(form.toByteArray()))
                .build();
        HttpResponse<byte[]> response = send(request);
        int expected = Integer.parseInt(fields.getOrDefault("success_action_status", "204"));
        if (response.statusCode() != expected) {
            fail(s3Error(response.statusCode(), response.body()));
        }
    }

    static void multipart(Path grant) throws Exception {
        List<String> etags = new ArrayList<>();
        while (true) {
            Map<?, ?> parts = (Map<?, ?>) new Json(read(grant, "parts")).value();
            long count = (Long) parts.get("count");
            int partSize = Math.toIntExact((Long) parts.get("partSize"));
            byte[] chunk = System.in.readNBytes(partSize);
            if (chunk.length == 0 && !etags.isEmpty()) {
                break;
            }
            int n = etags.size() + 1;
            if (n > count) {
                fail("the file has more than " + count + " parts of " + partSize
                        + " bytes; the upload was not completed");
            }
            etags.add(putPart(grant, n, chunk));
        }
        StringBuilder body = new StringBuilder("<CompleteMultipartUpload>");
        for (int i = 0; i < etags.size(); i++) {
            body.append("<Part><PartNumber>").append(i + 1).append("</PartNumber><ETag>")
                    .append(etags.get(i).replace("&", "&amp;").replace("<", "&lt;"))
                    .append("</ETag></Part>");
        }
        body.append("</CompleteMultipartUpload>");
        HttpResponse<byte[]> response = send(HttpRequest.newBuilder(URI.create(read(grant, "completeUrl")))
                .header("Content-Type", "application/xml")
                .POST(HttpRequest.BodyPublishers.ofString(body.toString()))
                .build());
        String answer = new String(response.body(), StandardCharsets.UTF_8);
        // A 200 can still carry an error: S3 reports some failures in the body.
        if (response.statusCode() != 200 || answer.contains("<Error>")) {
            fail("complete: " + s3Error(response.statusCode(), response.body()));
        }
    }

    /** One part, tried again with `parts` read again (fresh signatures): its ETag. */
    static String putPart(Path grant, int n, byte[] chunk) throws Exception {
        for (int attempt = 1; ; attempt++) {
            Map<?, ?> parts = (Map<?, ?>) new Json(read(grant, "parts")).value();
            String signature = (String) ((List<?>) parts.get("signatures")).get(n - 1);
            String url = ((String) parts.get("url")).replace("{partNumber}", Integer.toString(n))
                    .replace("{signature}", signature);
            HttpRequest request = HttpRequest.newBuilder(URI.create(url))
                    .PUT(HttpRequest.BodyPublishers.ofByteArray(chunk))
                    .build();
            String problem;
            try {
                HttpResponse<byte[]> response = CLIENT.send(request, HttpResponse.BodyHandlers.ofByteArray());
                if (response.statusCode() == 200) {
                    return response.headers().firstValue("ETag").orElse("");
                }
                problem = s3Error(response.statusCode(), response.body());
            } catch (IOException e) {
                problem = e.toString();
            }
            if (attempt == ATTEMPTS) {
                fail("part " + n + ": " + problem + "; gave up after " + ATTEMPTS + " attempts");
            }
            System.err.println("consumer: part " + n + ": " + problem + "; retrying (attempt "
                    + (attempt + 1) + " of " + ATTEMPTS + ")");
            Thread.sleep(1000L * attempt);
        }
    }

    /** Just enough JSON for `parts`: objects, arrays, strings and integers. */
    static final class Json {
        private final String s;
        private int i;

        Json(String s) {
            this.s = s;
        }

        Object value() {
            skip();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> out = new LinkedHashMap<>();
                i++;
                while (!next('}')) {
                    int[] pos = {i};
                    String key = string(s, pos);
                    i = pos[0];
                    skip();
                    i++; // :
                    out.put(key, value());
                    next(',');
                }
                return out;
            }
            if (c == '[') {
                List<Object> out = new ArrayList<>();
                i++;
                while (!next(']')) {
                    out.add(value());
                    next(',');
                }
                return out;
            }
            if (c == '"') {
                int[] pos = {i};
                String out = string(s, pos);
                i = pos[0];
                return out;
            }
            int start = i;
            while (i < s.length() && (Character.isDigit(s.charAt(i)) || s.charAt(i) == '-')) {
                i++;
            }
            return Long.parseLong(s.substring(start, i));
        }

        private void skip() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }

        /** Consumes `c` if it comes next. */
        private boolean next(char c) {
            skip();
            if (i < s.length() && s.charAt(i) == c) {
                i++;
                return true;
            }
            return false;
        }
    }

    static String read(Path dir, String name) throws IOException {
        return Files.readString(dir.resolve(name)).strip();
    }

    static void fail(String message) {
        System.err.println("consumer: " + message);
        System.exit(1);
    }

    /** A JSON object of strings, as the Secret's `headers` holds (the JDK has no JSON parser). */
    static Map<String, String> parseObject(String json) {
        Map<String, String> out = new LinkedHashMap<>();
        int[] pos = {0};
        expect(json, pos, '{');
        if (peek(json, pos) == '}') {
            pos[0]++;
            return out;
        }
        while (true) {
            String key = string(json, pos);
            expect(json, pos, ':');
            out.put(key, string(json, pos));
            char next = peek(json, pos);
            pos[0]++;
            if (next == '}') {
                return out;
            }
            if (next != ',') {
                fail("headers: expected , or } at " + (pos[0] - 1));
            }
        }
    }

    static char peek(String s, int[] pos) {
        while (pos[0] < s.length() && Character.isWhitespace(s.charAt(pos[0]))) {
            pos[0]++;
        }
        if (pos[0] >= s.length()) {
            fail("headers: unexpected end");
        }
        return s.charAt(pos[0]);
    }

    static void expect(String s, int[] pos, char c) {
        if (peek(s, pos) != c) {
            fail("headers: expected " + c + " at " + pos[0]);
        }
        pos[0]++;
    }

    static String string(String s, int[] pos) {
        expect(s, pos, '"');
        StringBuilder b = new StringBuilder();
        for (int i = pos[0]; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"') {
                pos[0] = i + 1;
                return b.toString();
            }
            if (c != '\\') {
                b.append(c);
                continue;
            }
            char e = s.charAt(++i);
            switch (e) {
                case 'b' -> b.append('\b');
                case 'f' -> b.append('\f');
                case 'n' -> b.append('\n');
                case 'r' -> b.append('\r');
                case 't' -> b.append('\t');
                case 'u' -> {
                    b.append((char) Integer.parseInt(s.substring(i + 1, i + 5), 16));
                    i += 4;
                }
                default -> b.append(e); // \" \\ \/
            }
        }
        fail("headers: unterminated string");
        return null;
    }
}
