/*
 * A DM application in C, built against the installed <dmapi.h> and
 * libdmapi.so: a session on this node with read and write dispositions for
 * the file system mounted at argv[1]; it answers reads under an exclusive
 * right after an invisible read of the file's first bytes, CONTINUE, and
 * writes ABORT with EPERM, until it has answered argv[2] writes. Then the
 * XDSM error cases a
 * program meets, each printed as NAME=errno. Lines on stdout for the test.
 */
#include <dmapi.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what)
{
	printf("FAILED %s errno=%d (%s)\n", what, errno, strerror(errno));
	return 1;
}

/* The errno of a call expected to fail, or 0 if it did not. */
#define ERRNO_OF(call) ((call) == 0 ? 0 : errno)

int main(int argc, char **argv)
{
	char *version;
	dm_sessid_t sid;
	void *fsh;
	size_t fshlen, rlen;
	dm_eventset_t set;
	static char buf[65536];
	int left;

	if (argc != 3)
		return 2;
	if (dm_init_service(&version))
		return fail("dm_init_service");
	if (dm_create_session(DM_NO_SESSION, "c-loop", &sid))
		return fail("dm_create_session");
	if (dm_path_to_fshandle(argv[1], &fsh, &fshlen))
		return fail("dm_path_to_fshandle");
	DMEV_ZERO(set);
	DMEV_SET(DM_EVENT_READ, set);
	DMEV_SET(DM_EVENT_WRITE, set);
	if (dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX))
		return fail("dm_set_disp");
	if (dm_set_eventlist(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX))
		return fail("dm_set_eventlist");
	printf("READY sid=%d version=%s\n", sid, version);
	fflush(stdout);

	for (left = atoi(argv[2]); left > 0;) {
		dm_eventmsg_t *m;

		if (dm_get_events(sid, 16, DM_EV_WAIT, sizeof buf, buf, &rlen)) {
			if (errno == EINTR)
				continue;
			return fail("dm_get_events");
		}
		for (m = (dm_eventmsg_t *)buf; m; m = DM_STEP_TO_NEXT(m, dm_eventmsg_t *)) {
			dm_data_event_t *de = DM_GET_VALUE(m, ev_data, dm_data_event_t *);
			void *h = DM_GET_VALUE(de, de_handle, void *);
			size_t hl = DM_GET_LEN(de, de_handle);
			dm_ino_t ino = 0;

			if (dm_handle_to_ino(h, hl, &ino))
				return fail("dm_handle_to_ino");
			printf("EVENT type=%d node=%u ino=%llu offset=%lld length=%llu\n", (int)m->ev_type,
			       DM_EV_NODEID(m), (unsigned long long)ino, (long long)de->de_offset,
			       (unsigned long long)de->de_length);
			if (m->ev_type == DM_EVENT_WRITE) {
				if (dm_respond_event(sid, m->ev_token, DM_RESP_ABORT, EPERM, 0, NULL))
					return fail("dm_respond_event abort");
				left--;
			} else {
				char peek[8];
				dm_right_t right;
				dm_ssize_t got;

				if (dm_request_right(sid, h, hl, m->ev_token, DM_RR_WAIT, DM_RIGHT_EXCL))
					return fail("dm_request_right");
				if (dm_query_right(sid, h, hl, m->ev_token, &right))
					return fail("dm_query_right");
				got = dm_read_invis(sid, h, hl, m->ev_token, 0, sizeof peek, peek);
				if (got < 0)
					return fail("dm_read_invis");
				printf("PEEK right=%d %.*s\n", (int)right, (int)got, peek);
				if (dm_release_right(sid, h, hl, m->ev_token))
					return fail("dm_release_right");
				if (dm_respond_event(sid, m->ev_token, DM_RESP_CONTINUE, 0, 0, NULL))
					return fail("dm_respond_event continue");
			}
			fflush(stdout);
		}
	}

	/* What a program gets wrong, and the errno XDSM gives it. */
	{
		char small[2];
		size_t need = 0;
		int e2big = ERRNO_OF(dm_query_session(sid, sizeof small, small, &need));
		int badsid = ERRNO_OF(dm_get_events(sid + 4096, 1, 0, sizeof buf, buf, &rlen));
		int none = ERRNO_OF(dm_get_events(sid, 1, 0, sizeof buf, buf, &rlen));
		int badtoken = ERRNO_OF(dm_respond_event(sid, 999999, DM_RESP_CONTINUE, 0, 0, NULL));
		dm_ino_t ino;
		int badhandle = ERRNO_OF(dm_handle_to_ino("junk", 4, &ino));
		int nullout = ERRNO_OF(dm_create_session(DM_NO_SESSION, "x", NULL));
		int badresp = ERRNO_OF(dm_respond_event(sid, 1, 77, 0, 0, NULL));

		printf("ERRORS e2big=%d need=%zu badsid=%d none=%d badtoken=%d badhandle=%d nullout=%d badresp=%d\n",
		       e2big, need, badsid, none, badtoken, badhandle, nullout, badresp);
	}
	dm_handle_free(fsh, fshlen);
	if (dm_destroy_session(sid))
		return fail("dm_destroy_session");
	printf("DONE\n");
	return 0;
}
