// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// JDK only (java.net.http), run as a single source file, no build tool:
//
//   java Consumer.java [/grant] < file   # a PUT grant: uploads stdin
//   java Consumer.java [/grant] > file   # a GET grant: writes the object
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
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

public class Consumer {
    public static void main(String[] args) throws Exception {
        Path grant = Path.of(args.length > 0 ? args[0] : "/grant");
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

        // HTTP/1.1: S3 stores do not all speak h2c, and an upgrade attempt adds headers.
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpResponse<byte[]> response = null;
        try {
            response = client.send(request.build(), HttpResponse.BodyHandlers.ofByteArray());
        } catch (IOException e) {
            fail(e.toString());
        }
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
