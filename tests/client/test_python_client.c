/*
 * client/python/sinkd_client.py against the real daemon: its streamed greedy
 * generation equals `sinkctl run` and the golden tokens; a generation left
 * early is cancelled; a daemon's bad frames are clear errors; a persistent
 * session attached, saved, restored and forgotten. Skipped when no python3
 * with the msgpack module is installed.
 */
#include "client_check.h"

TestSuite(python, .init = check_daemon_start, .fini = check_daemon_stop, .timeout = 120);

#define CLIENT_PY SINKD_SOURCE_DIR "/client/python/sinkd_client.py"

/* The first python3 that can import msgpack, or NULL. */
static const char *find_python(void)
{
    static const char *const candidates[] = { "/usr/bin/python3", "/usr/local/bin/python3",
                                              "/bin/python3" };
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        if (access(candidates[i], X_OK) != 0)
            continue;
        char *argv[] = { (char *)candidates[i], (char *)"-c", (char *)"import msgpack", NULL };
        check_run r = check_exec(argv, NULL);
        int status = r.status;
        check_run_free(&r);
        if (status == 0)
            return candidates[i];
    }
    return NULL;
}

/* find_python's, or the test skips saying why. */
static const char *python_or_skip(void)
{
    const char *py = find_python();
    if (py == NULL)
        cr_skip_test("no python3 with the msgpack module (Debian: python3-msgpack)");
    return py;
}

static check_golden golden[CHECK_GOLDEN_CASES];

Test(python, streams_the_same_text_as_sinkctl)
{
    const char *py = python_or_skip();
    check_golden_load(golden);
    for (int k = 0; k < CHECK_GOLDEN_CASES; k++) {
        char n[16], want[CHECK_GREEDY_MAX + 1];
        snprintf(n, sizeof(n), "%zu", golden[k].n_greedy);
        check_detok(golden[k].greedy, golden[k].n_greedy, want, sizeof(want));

        char *argv[] = { (char *)py, (char *)CLIENT_PY, (char *)"--socket",
                         check_daemon.socket_path, (char *)"-n", n, golden[k].prompt, NULL };
        check_run r = check_exec(argv, NULL);
        cr_assert_eq(r.status, 0, "case %d: exit %d: %s", k, r.status, r.err);
        check_run c = CHECK_SINKCTL_RUN(NULL, "run", "-n", n, golden[k].prompt);
        cr_assert_eq(c.status, 0, "%s", c.err);
        cr_expect_str_eq(r.out, c.out, "case %d: python vs sinkctl", k);
        cr_expect_str_eq(r.out, want, "case %d: python vs golden", k);
        cr_expect_not_null(strstr(r.err, ", length]"), "%s", r.err);
        check_run_free(&c);
        check_run_free(&r);
    }

    /* An unknown model is the daemon's error: exit 1 with its code. */
    char *argv[] = { (char *)py, (char *)CLIENT_PY, (char *)"--socket",
                     check_daemon.socket_path, (char *)"--model", (char *)"no-such-model",
                     (char *)"x", NULL };
    check_run r = check_exec(argv, NULL);
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "not_found"), "%s", r.err);
    check_run_free(&r);
}

/* python3 -c @script, the daemon's socket as argv[1] (or the test skips
 * without a python3 that has msgpack). */
static check_run run_script(const char *script)
{
    char *argv[] = { (char *)python_or_skip(), (char *)"-c", (char *)script,
                     check_daemon.socket_path, NULL };
    return check_exec(argv, NULL);
}

/* run_script(@script): it exits 0 having printed exactly @want. */
static void expect_script(const char *script, const char *want)
{
    check_run r = run_script(script);
    cr_expect_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    cr_expect_str_eq(r.out, want, "%s", r.err);
    check_run_free(&r);
}

/* The script's first lines: the client's directory on sys.path. */
#define PY_PRELUDE \
    "import sys\n" \
    "sys.path.insert(0, '" SINKD_SOURCE_DIR "/client/python')\n" \
    "from sinkd_client import Client, SinkdError\n"

/* Then, for scripts that speak the wire themselves: a frame out, and every
 * frame in until the daemon closes (the socket's timeout bounds the wait). */
#define PY_RAW \
    "import socket, struct, msgpack\n" \
    "def raw_send(b, m):\n" \
    "    p = msgpack.packb(m)\n" \
    "    b.sendall(struct.pack('>I', len(p)) + p)\n" \
    "def raw_frames(b):\n" \
    "    data = b''\n" \
    "    while True:\n" \
    "        c = b.recv(65536)\n" \
    "        if not c:\n" \
    "            break\n" \
    "        data += c\n" \
    "    out = []\n" \
    "    while data:\n" \
    "        n = struct.unpack('>I', data[:4])[0]\n" \
    "        out.append(msgpack.unpackb(data[4:4 + n], raw=False))\n" \
    "        data = data[4 + n:]\n" \
    "    return out\n"

/* Then, for scripts that pipeline: the replies (not events) of the next @n
 * requests of client @a by id, each event handed to @on_event with the
 * replies so far. */
#define PY_REPLIES \
    "def replies(a, n, on_event=lambda m, done: None):\n" \
    "    done = {}\n" \
    "    while len(done) < n:\n" \
    "        m = a._recv()\n" \
    "        if 'ev' in m:\n" \
    "            on_event(m, done)\n" \
    "        else:\n" \
    "            done[m['id']] = m\n" \
    "    return done\n"

/* Leaving a generation's loop early cancels it: the session takes the next
 * prompt at once instead of answering busy while the abandoned generation
 * runs on (a million tokens: it would still be running). */
Test(python, leaving_the_loop_cancels_the_generation)
{
    expect_script(PY_PRELUDE
                  "with Client(sys.argv[1]) as c:\n"
                  "    s = c.session_open()\n"
                  "    c.session_append(s, text='Once upon a time')\n"
                  "    for ev in c.session_generate(s, max_tokens=1000000):\n"
                  "        break\n"
                  "    c.session_append(s, text=' and')\n"
                  "    for ev in c.session_generate(s, max_tokens=3):\n"
                  "        if ev['ev'] == 'done':\n"
                  "            print(ev['reason'], ev['n_tokens'])\n",
                  "length 3\n");
}

/* A daemon that answers with bytes that are not msgpack, or with an error
 * that is not a map: ConnectionError and SinkdError with a message, never
 * a decoder's or an AttributeError's traceback. A throwaway server in the
 * script plays the daemon. */
Test(python, bad_frames_are_clear_errors)
{
    check_run r = run_script(PY_PRELUDE
                             "import os, socket, struct, tempfile, threading\n"
                             "def serve(path, payload):\n"
                             "    srv = socket.socket(socket.AF_UNIX)\n"
                             "    srv.bind(path)\n"
                             "    srv.listen(1)\n"
                             "    def run():\n"
                             "        conn, _ = srv.accept()\n"
                             "        conn.recv(65536)\n"
                             "        conn.sendall(struct.pack('>I', len(payload)) + payload)\n"
                             "        conn.recv(65536)\n"
                             "        conn.close()\n"
                             "    threading.Thread(target=run, daemon=True).start()\n"
                             "d = tempfile.mkdtemp()\n"
                             "for i, payload in enumerate([b'\\xc1', b'\\x81\\xa5error\\xa3bad']):\n"
                             "    path = os.path.join(d, str(i))\n"
                             "    serve(path, payload)\n"
                             "    try:\n"
                             "        Client(path)\n"
                             "    except (ConnectionError, SinkdError) as e:\n"
                             "        print(type(e).__name__ + ': ' + str(e))\n");
    cr_expect_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    cr_expect(strstr(r.out, "ConnectionError: a malformed frame from the daemon") != NULL, "%s|%s",
              r.out, r.err);
    cr_expect(strstr(r.out, "SinkdError: protocol: an error reply whose error is not a map") != NULL,
              "%s|%s", r.out, r.err);
    check_run_free(&r);
}

/* A request over the daemon's max_frame (its hello says 16 MiB here) is
 * refused by the client before a byte is sent: the daemon would close the
 * connection, and the same connection answers the next request. */
Test(python, oversized_requests_are_refused_before_sending)
{
    expect_script(PY_PRELUDE
                  "with Client(sys.argv[1]) as c:\n"
                  "    print(c.max_frame)\n"
                  "    try:\n"
                  "        c.tokenize('x' * (c.max_frame + 1))\n"
                  "    except SinkdError as e:\n"
                  "        print(e.code)\n"
                  "    print(c.tokenize('hi') == c.tokenize('hi'))\n",
                  "16777216\nframe_too_large\nTrue\n");
}

/* Streamed pieces add up to the reply's text, even when the generation
 * ends (by length here) while the start of a stop string is held back:
 * the client yields that tail as a "text" event. (The tiny model's greedy
 * text after this prompt ends its 30th token inside "the".) */
Test(python, streamed_pieces_add_up_to_the_text)
{
    expect_script(PY_PRELUDE
                  "with Client(sys.argv[1]) as c:\n"
                  "    s = c.session_open()\n"
                  "    c.session_append(s, text='Once upon a time')\n"
                  "    pieces, tails = [], 0\n"
                  "    for ev in c.session_generate(s, max_tokens=30, stop=['the end']):\n"
                  "        if ev['ev'] in ('token', 'text'):\n"
                  "            pieces.append(ev['text'])\n"
                  "            tails += ev['ev'] == 'text'\n"
                  "        elif ev['ev'] == 'done':\n"
                  "            print(ev['reason'], ''.join(pieces) == ev['text'], tails)\n",
                  "length True 1\n");
}

/* A generation ends with the connection that asked for it, whoever owns
 * the session: a persistent session whose owner drops mid-generation, and
 * sessions generating for another connection of the same uid, all go idle
 * at once (a million tokens would still be running) and take a prompt. */
Test(python, a_generation_ends_with_the_connection_that_asked)
{
    expect_script(PY_PRELUDE
                  "import time\n"
                  "def state(c, s):\n"
                  "    for e in c.request('session.list')['sessions']:\n"
                  "        if e['session'] == s:\n"
                  "            return e['state']\n"
                  "def drop_mid_generation(path, s):\n"
                  "    b = Client(path)\n"
                  "    b._send('session.generate', {'session': s, 'max_tokens': 1000000,\n"
                  "                                 'ignore_eos': True})\n"
                  "    b._recv()  # its first token: it generates\n"
                  "    b.close()\n"
                  "def wait_idle(c, s):\n"
                  "    for i in range(400):\n"
                  "        st = state(c, s)\n"
                  "        if st != 'generating':\n"
                  "            return st\n"
                  "        time.sleep(0.025)\n"
                  "    return st\n"
                  "with Client(sys.argv[1]) as a:\n"
                  "    owner = Client(sys.argv[1])\n"
                  "    p = owner.session_open(persist=True)\n"
                  "    owner.session_append(p, text='Once upon a time')\n"
                  "    owner._send('session.generate', {'session': p, 'max_tokens': 1000000,\n"
                  "                                     'ignore_eos': True})\n"
                  "    owner._recv()\n"
                  "    owner.close()\n"
                  "    print('owner gone:', wait_idle(a, p))\n"
                  "    for persist in (True, False):\n"
                  "        s = a.session_open(persist=persist)\n"
                  "        a.session_append(s, text='Once upon a time')\n"
                  "        drop_mid_generation(sys.argv[1], s)\n"
                  "        print('asker gone:', wait_idle(a, s))\n"
                  "        a.session_append(s, text=' and')\n"
                  "        a.session_close(s)\n"
                  "    a.session_close(p)\n",
                  "owner gone: idle\nasker gone: idle\nasker gone: idle\n");
}

/* A generate refused with busy (another caller's generation runs on the
 * session) does not cancel that generation on its way out. */
Test(python, a_refused_generate_cancels_nothing)
{
    expect_script(PY_PRELUDE
                  "with Client(sys.argv[1]) as a, Client(sys.argv[1]) as b:\n"
                  "    s = a.session_open()\n"
                  "    a.session_append(s, text='Once upon a time')\n"
                  "    a._send('session.generate', {'session': s, 'max_tokens': 1000000,\n"
                  "                                 'ignore_eos': True})\n"
                  "    a._recv()  # it runs\n"
                  "    try:\n"
                  "        for ev in b.session_generate(s, max_tokens=5):\n"
                  "            pass\n"
                  "    except SinkdError as e:\n"
                  "        print(e.code)\n"
                  "    st = [x['state'] for x in b.request('session.list')['sessions']\n"
                  "          if x['session'] == s]\n"
                  "    print(st)\n"
                  "    b.session_cancel(s)\n",
                  "busy\n['generating']\n");
}

/* The example's main() against a daemon whose session.open reply lacks its
 * session id: a clear message and exit 3, not a traceback. (A stand-in
 * daemon in the script itself; sys.argv[1], the real one, is not used.) */
Test(python, main_reports_a_malformed_reply)
{
    expect_script(PY_PRELUDE
                  "import os, socket, struct, tempfile, threading, msgpack, io, contextlib\n"
                  "import sinkd_client\n"
                  "path = os.path.join(tempfile.mkdtemp(), 'fake.sock')\n"
                  "srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                  "srv.bind(path)\n"
                  "srv.listen(1)\n"
                  "def serve():\n"
                  "    c, _ = srv.accept()\n"
                  "    f = c.makefile('rb')\n"
                  "    while True:\n"
                  "        h = f.read(4)\n"
                  "        if len(h) < 4:\n"
                  "            return\n"
                  "        m = msgpack.unpackb(f.read(struct.unpack('>I', h)[0]))\n"
                  "        r = {'id': m['id'], 'ok': True}\n"
                  "        if m['op'] == 'hello':\n"
                  "            r.update(proto=1, max_frame=1 << 20)\n"
                  "        p = msgpack.packb(r)\n"
                  "        c.sendall(struct.pack('>I', len(p)) + p)\n"
                  "threading.Thread(target=serve, daemon=True).start()\n"
                  "err = io.StringIO()\n"
                  "with contextlib.redirect_stderr(err):\n"
                  "    rc = sinkd_client.main(['--socket', path, 'hi'])\n"
                  "print(rc, 'malformed answer' in err.getvalue(), 'Traceback' in err.getvalue())\n",
                  "3 True False\n");
}

/* A long prompt whose connection closes mid-prefill stops at its next
 * layer instead of holding the engine (and every other client) for the
 * rest: it is undone like a failed append, so the session, opened by
 * another connection of the same uid, has consumed nothing. */
Test(python, a_prefill_stops_when_its_connection_closes)
{
    expect_script(PY_PRELUDE
                  "with Client(sys.argv[1]) as b:\n"
                  "    s = b.session_open(policy='window', params='window=64')\n"
                  "    a = Client(sys.argv[1])\n"
                  "    a._send('session.append', {'session': s,\n"
                  "                               'text': 'Once upon a time. ' * 12000})\n"
                  "    a.close()\n"
                  "    print([x['tokens'] for x in b.request('session.list')['sessions']\n"
                  "           if x['session'] == s])\n",
                  "[0]\n");
}

/* The clients of the long prompts below wait up to 300 s for a frame: a
 * sanitizer build on two loaded cores runs a 512-token chunk in seconds.
 *
 * A session.cancel, then a session.close, of a session behind its prompt
 * of @reps pieces of 18 bytes (a token each) stop the prompt: the append
 * answers cancelled first, undone (no tokens consumed), then the cancel or
 * close answers. One connection, so that the engine queues the two in that
 * order. */
static void expect_prompt_stops(int reps)
{
    char script[2048];
    int n = snprintf(script, sizeof script,
                     PY_PRELUDE
                     "with Client(sys.argv[1], 300) as a:\n"
                     "    for op in ('session.cancel', 'session.close'):\n"
                     "        s = a.session_open(policy='window', params='window=64')\n"
                     "        i = a._send('session.append', {'session': s,\n"
                     "                                       'text': 'Once upon a time. ' * %d})\n"
                     "        k = a._send(op, {'session': s})\n"
                     "        r1, r2 = a._recv(), a._recv()\n"
                     "        print(op, r1['id'] == i, r1.get('error', {}).get('code'),\n"
                     "              r2['id'] == k, 'error' in r2)\n"
                     "        print([x['tokens'] for x in a.request('session.list')['sessions']\n"
                     "               if x['session'] == s])\n",
                     reps);
    cr_assert(n > 0 && (size_t)n < sizeof script);
    expect_script(script, "session.cancel True cancelled True False\n[0]\n"
                          "session.close True cancelled True False\n[]\n");
}

/* A long prompt (216K tokens, hundreds of chunks) stops at its next layer. */
Test(python, a_prefill_stops_on_cancel_or_close)
{
    expect_prompt_stops(12000);
}

/* A session.cancel queued behind a session.generate of the same session is
 * that generation's: the prompt ahead of both (three chunks) is not
 * stopped, the generation is. */
Test(python, a_cancel_behind_a_generate_stops_the_generation_not_the_prompt)
{
    expect_script(PY_PRELUDE PY_REPLIES
                  "with Client(sys.argv[1], 300) as a:\n"
                  "    s = a.session_open(policy='window', params='window=64')\n"
                  "    i = a._send('session.append', {'session': s,\n"
                  "                                   'text': 'Once upon a time. ' * 80})\n"
                  "    g = a._send('session.generate', {'session': s, 'max_tokens': 4000,\n"
                  "                                     'ignore_eos': True})\n"
                  "    k = a._send('session.cancel', {'session': s})\n"
                  "    done = replies(a, 3)\n"
                  "    print('error' in done[i], done[i].get('n_tokens', 0) > 1024,\n"
                  "          done[g].get('reason'), done[g].get('n_tokens', 4000) < 4000,\n"
                  "          'error' in done[k])\n",
                  "False True cancelled True False\n");
}

/* A long prompt does not stall the other sessions' generations: they take
 * a step between two of its chunks. One connection, so that the frames
 * come out in the engine's order: the generation's tokens before the
 * append's reply number at least the prompt's chunks less one (six chunks
 * of the default 512 tokens here; without the steps at most the first
 * token would come before it). */
Test(python, a_long_prompt_lets_other_generations_step)
{
    expect_script(PY_PRELUDE PY_REPLIES
                  "with Client(sys.argv[1], 300) as a:\n"
                  "    s1 = a.session_open()\n"
                  "    a.session_append(s1, text='Once upon a time')\n"
                  "    s2 = a.session_open(policy='window', params='window=64')\n"
                  "    g = a._send('session.generate', {'session': s1, 'max_tokens': 40,\n"
                  "                                     'ignore_eos': True})\n"
                  "    i = a._send('session.append', {'session': s2,\n"
                  "                                   'text': 'Once upon a time. ' * 150})\n"
                  "    before = []\n"
                  "    def count(m, done):\n"
                  "        if m['id'] == g and m['ev'] == 'token' and i not in done:\n"
                  "            before.append(m)\n"
                  "    done = replies(a, 2, count)\n"
                  "    print(len(before) >= 5, 'error' in done[i], done[i]['n_tokens'] > 5 * 512,\n"
                  "          done[g].get('reason'), done[g].get('n_tokens'))\n",
                  "True False True length 40\n");
}

/* The steps a long prompt lets run come before the jobs queued behind it:
 * a cancel of a generation waiting there still ends it at its next step,
 * not after a step a chunk (four chunks: three steps without that). And a
 * cancel stops one thing: of two prompts ahead of it, the first; the
 * second runs. Each batch of requests goes out in one write, so that the
 * daemon queues them together; a tokenize marks where the long prompt
 * starts in the connection's frames. */
Test(python, a_cancel_behind_a_long_prompt_is_not_late_and_stops_one_thing)
{
    expect_script(PY_PRELUDE PY_REPLIES
                  "import struct, msgpack\n"
                  "def send_all(a, reqs):\n"
                  "    out, ids = b'', []\n"
                  "    for op, f in reqs:\n"
                  "        m = dict(f, op=op, id=a.next_id)\n"
                  "        ids.append(a.next_id)\n"
                  "        a.next_id += 1\n"
                  "        p = msgpack.packb(m, use_bin_type=True)\n"
                  "        out += struct.pack('>I', len(p)) + p\n"
                  "    a.sock.sendall(out)\n"
                  "    return ids\n"
                  "long = 'Once upon a time. ' * 100\n"
                  "with Client(sys.argv[1], 300) as a:\n"
                  "    s1 = a.session_open()\n"
                  "    a.session_append(s1, text='Once upon a time')\n"
                  "    s2 = a.session_open(policy='window', params='window=64')\n"
                  "    g, t, i, k = send_all(a, [\n"
                  "        ('session.generate', {'session': s1, 'max_tokens': 4000,\n"
                  "                              'ignore_eos': True}),\n"
                  "        ('tokenize', {'text': 'x'}),\n"
                  "        ('session.append', {'session': s2, 'text': long}),\n"
                  "        ('session.cancel', {'session': s1})])\n"
                  "    during = []\n"
                  "    def count(m, done):\n"
                  "        if m['id'] == g and m['ev'] == 'token' and t in done and i not in done:\n"
                  "            during.append(m)\n"
                  "    done = replies(a, 4, count)\n"
                  "    print(done[g].get('reason'), len(during) <= 1, 'error' in done[i],\n"
                  "          'error' in done[k])\n"
                  "    i1, i2, k = send_all(a, [\n"
                  "        ('session.append', {'session': s2, 'text': long}),\n"
                  "        ('session.append', {'session': s2, 'text': ' The end.'}),\n"
                  "        ('session.cancel', {'session': s2})])\n"
                  "    done = replies(a, 3)\n"
                  "    print(done[i1].get('error', {}).get('code'), 'error' in done[i2],\n"
                  "          done[i2].get('n_tokens'), 'error' in done[k])\n",
                  "cancelled True False False\ncancelled False 9 False\n");
}

/* Requests that touch no session (session.list, tokenize, session.open)
 * from another connection do not wait for a long prompt: they are answered
 * while it runs (its reply not there yet; the list counts the prompt's
 * session as before it), and then a cancel stops it (again, should the
 * first come before the prompt was queued: a cancel stops only what runs). */
Test(python, requests_of_others_do_not_wait_for_a_long_prompt)
{
    expect_script(PY_PRELUDE
                  "import select\n"
                  "with Client(sys.argv[1], 300) as a, Client(sys.argv[1], 300) as b:\n"
                  "    s = a.session_open(policy='window', params='window=64')\n"
                  "    i = a._send('session.append', {'session': s,\n"
                  "                                   'text': 'Once upon a time. ' * 12000})\n"
                  "    ls = b.request('session.list')['sessions']\n"
                  "    n = (len(ls), [x['tokens'] for x in ls if x['session'] == s])\n"
                  "    ids = b.tokenize('abc')\n"
                  "    s2 = b.session_open()\n"
                  "    running = not select.select([a.sock], [], [], 0)[0]\n"
                  "    b.session_cancel(s)\n"
                  "    while not select.select([a.sock], [], [], 2)[0]:\n"
                  "        b.session_cancel(s)  # in case the prompt was not queued yet\n"
                  "    r = a._recv()\n"
                  "    print(n, len(ids) >= 3, s2 > s, running, r['id'] == i,\n"
                  "          r.get('error', {}).get('code'))\n",
                  "(1, [0]) True True True True cancelled\n");
}

/* A request that runs between a long prompt's chunks comes after what its
 * connection sent before: a one-token append (batched with others) taken
 * with the prompt runs before the prompt, so the session.list sent after
 * it, on the same connection, counts its token. A first prompt (three
 * chunks: a tenth of a second here, seconds under a sanitizer) keeps the
 * engine busy while the three requests queue up together, the list last. */
Test(python, a_list_between_chunks_sees_its_connections_earlier_append)
{
    expect_script(PY_PRELUDE
                  "import time\n"
                  "def tokens(cl, sid):\n"
                  "    return [x['tokens'] for x in cl.request('session.list')['sessions']\n"
                  "            if x['session'] == sid][0]\n"
                  "with Client(sys.argv[1], 300) as a, Client(sys.argv[1], 300) as c, \\\n"
                  "        Client(sys.argv[1], 300) as d:\n"
                  "    x = c.session_open()\n"
                  "    c.session_append(x, text='Once upon a time')\n"
                  "    before = tokens(c, x)\n"
                  "    s0 = d.session_open(policy='window', params='window=64')\n"
                  "    s2 = a.session_open(policy='window', params='window=64')\n"
                  "    p0 = d._send('session.append', {'session': s0,\n"
                  "                                    'text': 'Once upon a time. ' * 60})\n"
                  "    k1 = c._send('session.append', {'session': x, 'ids': [5]})\n"
                  "    time.sleep(0.05)  # k1 read first\n"
                  "    p2 = a._send('session.append', {'session': s2,\n"
                  "                                    'text': 'Once upon a time. ' * 60})\n"
                  "    time.sleep(0.05)  # read after a's append: queued behind it\n"
                  "    k2 = c._send('session.list', {})\n"
                  "    r1, r2 = c._recv(), c._recv()\n"
                  "    listed = [y['tokens'] for y in r2.get('sessions', []) if y['session'] == x]\n"
                  "    print(r1['id'] == k1, 'error' in r1, r2['id'] == k2, listed == [before + 1],\n"
                  "          'error' in a._recv(), 'error' in d._recv())\n",
                  "True False True True False False\n");
}

/* A client that shuts down only its sending side (`... | socat`) still gets
 * every answer it is owed, a generation's events and reply included, and
 * then the end of the stream; the session it used (another connection's)
 * is not disturbed. */
Test(python, a_half_closed_connection_gets_its_answers_then_eof)
{
    expect_script(PY_PRELUDE PY_RAW
                  "with Client(sys.argv[1]) as a:\n"
                  "    s = a.session_open()\n"
                  "    a.session_append(s, text='Once upon a time')\n"
                  "    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                  "    b.settimeout(20)\n"
                  "    b.connect(sys.argv[1])\n"
                  "    for m in ({'op': 'session.generate', 'id': 1, 'session': s,\n"
                  "               'max_tokens': 40, 'ignore_eos': True},\n"
                  "              {'op': 'tokenize', 'id': 2, 'text': 'hello'},\n"
                  "              {'op': 'status', 'id': 3}):\n"
                  "        raw_send(b, m)\n"
                  "    b.shutdown(socket.SHUT_WR)\n"
                  "    done = {m['id']: m for m in raw_frames(b) if 'ev' not in m}\n"
                  "    print(sorted(done), done[1].get('reason'), done[1].get('n_tokens'),\n"
                  "          'ids' in done[2], 'error' in done[3])\n"
                  "    print(a.session_stats(s)['tokens'] > 40)\n",
                  "[1, 2, 3] length 40 True False\nTrue\n");
}

/* A persistent session through the client's calls: it outlives the
 * connection that opened it, attaches from another with its secret (a
 * wrong one is not_found) and n_past counts its tokens; a snapshot saved,
 * restored (a rollback, by path and by id) and forgotten. The expected
 * counts come from the golden file, the prompt being its case 0. */
Test(python, persistent_session_attach_save_restore_forget)
{
    check_golden_load(golden);
    cr_assert_str_eq(golden[0].prompt, "Once upon a time");
    check_run r = run_script(PY_PRELUDE
                             "import os\n"
                             "with Client(sys.argv[1]) as c:\n"
                             "    s = c.session_open(persist=True)\n"
                             "    secret = c.last_open['secret']\n"
                             "    c.session_append(s, text='Once upon a time')\n"
                             "    for ev in c.session_generate(s, max_tokens=5, ignore_eos=True):\n"
                             "        pass\n"
                             "with Client(sys.argv[1]) as c:\n"
                             "    try:\n"
                             "        c.session_attach(s, '0' * 32)\n"
                             "    except SinkdError as e:\n"
                             "        print('wrong secret', e.code)\n"
                             "    a = c.session_attach(s, secret)\n"
                             "    print('attach', a['session'] == s, a['secret'] == secret, "
                             "a['n_past'])\n"
                             "    path = c.session_save(s)\n"
                             "    print('save', os.path.basename(path) == '%d.snap' % s, "
                             "os.path.exists(path))\n"
                             "    for ev in c.session_generate(s, max_tokens=3, ignore_eos=True):\n"
                             "        pass\n"
                             "    print('restore', c.session_restore(path=path)['n_past'])\n"
                             "    for ev in c.session_generate(s, max_tokens=3, ignore_eos=True):\n"
                             "        pass\n"
                             "    print('restore', c.session_restore(session=s)['n_past'])\n"
                             "    c.session_forget(s)\n"
                             "    print('forget', os.path.exists(path))\n"
                             "    try:\n"
                             "        c.session_forget(s)\n"
                             "    except SinkdError as e:\n"
                             "        print('forget again', e.code)\n"
                             "    c.session_close(s)\n");
    cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
    char want[256];
    size_t n_past = golden[0].n_prompt + 5;
    snprintf(want, sizeof(want),
             "wrong secret not_found\nattach True True %zu\nsave True True\nrestore %zu\n"
             "restore %zu\nforget False\nforget again not_found\n", n_past, n_past, n_past);
    cr_expect_str_eq(r.out, want, "%s", r.err);
    check_run_free(&r);
}

/* ---- a model whose text is known: "a€b" over and over ----------------------- */

/* The tiny model's bigram copy (cycle_gguf.py) beside it, as model "cycle":
 * after "a" its greedy tokens are the bytes e2 82 ac 62 61 ..., so a
 * generation can be made to end inside the three bytes of the euro sign.
 * And model "nan", which after "a" runs through 30 more letters and then
 * fails (NaN logits, which the host sampler refuses: temperature > 0): a
 * generation that fails after several steps. */
static char cycle_dir[] = "/tmp/sinkd-cycle-XXXXXX";
static char cycle_model[64], nan_model[64];

static void cycle_daemon_start(void)
{
    char cmd[512], arg[96], arg_nan[96];

    cr_assert_not_null(mkdtemp(cycle_dir));
    snprintf(cycle_model, sizeof cycle_model, "%s/cycle.gguf", cycle_dir);
    snprintf(nan_model, sizeof nan_model, "%s/nan.gguf", cycle_dir);
    snprintf(cmd, sizeof cmd, "python3 %s/tests/client/cycle_gguf.py %s %s 61e282ac62",
             SINKD_SOURCE_DIR, CHECK_MODEL, cycle_model);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    snprintf(cmd, sizeof cmd,
             "python3 %s/tests/client/cycle_gguf.py %s %s "
             "6162636465666768696a6b6c6d6e6f707172737475767778797a4142434445 --nan",
             SINKD_SOURCE_DIR, CHECK_MODEL, nan_model);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    snprintf(arg, sizeof arg, "cycle=%s", cycle_model);
    snprintf(arg_nan, sizeof arg_nan, "nan=%s", nan_model);
    const char *const args[] = { "--model", "tiny=" CHECK_MODEL, "--model", arg, "--model",
                                 arg_nan, "--backend", "cpu", NULL };
    int rc = sinkd_testd_start(&check_daemon, "[engine]\nkv_pool_bytes = 64M\n", args);
    cr_assert_eq(rc, 0, "sinkd did not start (%d)", rc);
}

static void cycle_daemon_stop(void)
{
    check_daemon_stop();
    unlink(cycle_model);
    unlink(nan_model);
    rmdir(cycle_dir);
}

TestSuite(python_cycle, .init = cycle_daemon_start, .fini = cycle_daemon_stop, .timeout = 120);

/* A generation that ends inside a character leaves it out of its text (no
 * U+FFFD), and the next generation, nothing appended between, starts with
 * it whole, in its events and its text alike. An append between drops the
 * held bytes: the text after it is the model's alone. */
Test(python_cycle, a_character_cut_by_the_end_comes_whole_in_the_next_reply)
{
    expect_script(PY_PRELUDE
                  "def gen(c, s, n):\n"
                  "    evs, r = [], None\n"
                  "    g = c.stream('session.generate', session=s, max_tokens=n,\n"
                  "                 ignore_eos=True, stream=True)\n"
                  "    try:\n"
                  "        while True:\n"
                  "            evs.append(next(g).get('text', ''))\n"
                  "    except StopIteration as done:\n"
                  "        r = done.value\n"
                  "    return ascii(''.join(evs)), ascii(r['text'])\n"
                  "with Client(sys.argv[1]) as c:\n"
                  "    s = c.session_open(model='cycle')\n"
                  "    c.session_append(s, text='a')\n"
                  "    print(*gen(c, s, 2))\n"
                  "    print(*gen(c, s, 3))\n"
                  "    print(*gen(c, s, 2))\n"
                  "    c.session_append(s, text='a')\n"
                  "    print(*gen(c, s, 5))\n",
                  "'' ''\n"
                  "'\\u20acba' '\\u20acba'\n"
                  "'' ''\n"
                  "'\\u20acba' '\\u20acba'\n");
}

/* A half-closed connection whose generation fails after some steps (NaN
 * logits) gets the error and then the end of the stream, and the session's
 * next generation, asked by another connection, does not finish that
 * one. */
Test(python_cycle, a_failed_generation_still_finishes_a_half_closed_connection)
{
    expect_script(PY_PRELUDE PY_RAW
                  "with Client(sys.argv[1]) as a:\n"
                  "    s = a.session_open(model='nan')\n"
                  "    a.session_append(s, text='a')\n"
                  "    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                  "    b.settimeout(20)\n"
                  "    b.connect(sys.argv[1])\n"
                  "    raw_send(b, {'op': 'session.generate', 'id': 1, 'session': s,\n"
                  "                 'max_tokens': 100, 'stream': False, 'temperature': 0.5})\n"
                  "    b.shutdown(socket.SHUT_WR)\n"
                  "    print(*[m['error']['code'] for m in raw_frames(b)])\n"
                  "    try:\n"
                  "        for ev in a.session_generate(s, max_tokens=100, temperature=0.5):\n"
                  "            pass\n"
                  "    except SinkdError as e:\n"
                  "        print(e.code)\n"
                  "    a.request('status')\n"
                  "    print('alive')\n",
                  "internal\ninternal\nalive\n");
}

/* ---- one chunk: a prompt that runs through the model in one piece -------- */

static void one_chunk_daemon_start(void)
{
    static const char *const args[] = { "--model", "tiny=" CHECK_MODEL, "--backend", "cpu",
                                         NULL };
    int rc = sinkd_testd_start(&check_daemon,
                               "[engine]\nkv_pool_bytes = 64M\nprefill_chunk = 8192\n", args);
    cr_assert_eq(rc, 0, "sinkd did not start (%d)", rc);
}

TestSuite(python_one_chunk, .init = one_chunk_daemon_start, .fini = check_daemon_stop,
          .timeout = 120);

/* A prompt of one chunk stops between two layers of its forward for a
 * cancel or close behind it (a chunk of a big model on a CPU runs for
 * seconds): answered cancelled, undone. 2K tokens: about a second of the
 * tiny model's four layers in an optimised build, tens under a sanitizer. */
Test(python_one_chunk, a_prompt_of_one_chunk_stops_between_layers)
{
    expect_prompt_stops(112);
}
