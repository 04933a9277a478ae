/*
 * A small HSM in C against <dmapi.h> and libdmapi.so, on a real node
 * daemon and mount. It migrates a file: under a user event's exclusive
 * right it copies the data out to a directory (the "tier"), records where
 * in a DM attribute, sets a managed region over the whole file and punches
 * the data out. A read of the file on another node then raises a read
 * event here: the HSM writes the data back with dm_write_invis, clears the
 * region and the attribute, and answers CONTINUE; the reader gets the bytes.
 * Before that, a child process on another node's daemon checks B13: the
 * session's queries work there, its changes are refused.
 *
 * argv: mount, file (on the mount), tier directory, another node's socket.
 * Lines on stdout for the test; stdin's first line says the test is done
 * reading again.
 */
#include <dmapi.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MUST(call) do { if ((call) != 0) { printf("FAILED %s errno=%d (%s)\n", #call, errno, strerror(errno)); exit(1); } } while (0)
#define ERRNO(call) ((call) < 0 ? errno : 0)

static char buf[1 << 20];
static char data[1 << 20];

static dm_attrname_t loc_attr(void)
{
	dm_attrname_t a;
	memset(&a, 0, sizeof a);
	memcpy(a.an_chars, "hsmloc", 6);
	return a;
}

/* B13, from a process whose library talks to another node's daemon. */
static void away(dm_sessid_t sid, void *fsh, size_t fshlen, const char *sock)
{
	pid_t kid = fork();
	int status;

	if (kid == 0) {
		char info[64];
		size_t rlen;
		dm_sessid_t sids[16];
		unsigned int n;
		dm_token_t t;
		dm_eventset_t set;

		setenv("TIDEPOOL_DM_SOCKET", sock, 1);
		DMEV_ZERO(set);
		DMEV_SET(DM_EVENT_READ, set);
		int q = ERRNO(dm_query_session(sid, sizeof info, info, &rlen));
		int all = ERRNO(dm_getall_sessions(16, sids, &n));
		int found = 0;
		for (unsigned int i = 0; !all && i < n; i++)
			found |= sids[i] == sid;
		printf("AWAY query=%d info=%s sessions=%d found=%d disp=%d respond=%d getev=%d userev=%d setdisp=%d "
		       "destroy=%d\n",
		       q, q ? "-" : info, all, found, ERRNO(dm_getall_disp(sid, sizeof buf, buf, &rlen)),
		       ERRNO(dm_respond_event(sid, 1, DM_RESP_CONTINUE, 0, 0, NULL)),
		       ERRNO(dm_get_events(sid, 1, 0, sizeof buf, buf, &rlen)),
		       ERRNO(dm_create_userevent(sid, 0, NULL, &t)),
		       ERRNO(dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX)),
		       ERRNO(dm_destroy_session(sid)));
		fflush(stdout);
		_exit(0);
	}
	waitpid(kid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		printf("FAILED the away child\n"), exit(1);
}

int main(int argc, char **argv)
{
	char *ver, tier[4096];
	dm_sessid_t sid;
	void *fsh, *h;
	size_t fshlen, hlen, rlen;
	dm_eventset_t set;
	dm_attrname_t loc = loc_attr();
	dm_stat_t st;
	dm_ino_t ino;
	dm_ssize_t got;

	if (argc != 5)
		return 2;
	MUST(dm_init_service(&ver));
	MUST(dm_create_session(DM_NO_SESSION, "c-hsm", &sid));
	MUST(dm_path_to_fshandle(argv[1], &fsh, &fshlen));
	DMEV_ZERO(set);
	DMEV_SET(DM_EVENT_READ, set);
	DMEV_SET(DM_EVENT_WRITE, set);
	DMEV_SET(DM_EVENT_TRUNCATE, set);
	MUST(dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
	MUST(dm_set_eventlist(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
	away(sid, fsh, fshlen, argv[4]);

	/* Migrate, under a user event's token and its exclusive right. */
	MUST(dm_path_to_handle(argv[2], &h, &hlen));
	MUST(dm_handle_to_ino(h, hlen, &ino));
	{
		dm_token_t tok;
		dm_region_t r = { .rg_offset = 0, .rg_size = 0,
				  .rg_flags = DM_REGION_READ | DM_REGION_WRITE | DM_REGION_TRUNCATE };
		dm_boolean_t exact;
		dm_extent_t ext[8];
		unsigned int n;
		dm_off_t off = 0;
		int fd, resident = 0, holes = 0;

		MUST(dm_create_userevent(sid, 0, NULL, &tok));
		MUST(dm_request_right(sid, h, hlen, tok, DM_RR_WAIT, DM_RIGHT_EXCL));
		MUST(dm_get_fileattr(sid, h, hlen, tok, DM_AT_STAT, &st));
		got = dm_read_invis(sid, h, hlen, tok, 0, st.dt_size, data);
		if (got != (dm_ssize_t)st.dt_size)
			printf("FAILED dm_read_invis got=%lld errno=%d\n", (long long)got, errno), exit(1);
		snprintf(tier, sizeof tier, "%s/%llu", argv[3], (unsigned long long)ino);
		fd = open(tier, O_CREAT | O_WRONLY | O_TRUNC, 0600);
		if (fd < 0 || write(fd, data, got) != got || fsync(fd) || close(fd))
			printf("FAILED writing the tier copy errno=%d\n", errno), exit(1);
		MUST(dm_set_dmattr(sid, h, hlen, tok, &loc, 0, strlen(tier) + 1, tier));
		MUST(dm_set_region(sid, h, hlen, tok, 1, &r, &exact));
		MUST(dm_punch_hole(sid, h, hlen, tok, 0, 0));
		MUST(dm_get_allocinfo(sid, h, hlen, tok, &off, 8, ext, &n));
		for (unsigned int i = 0; i < n; i++) {
			resident += ext[i].ex_type == DM_EXTENT_RES;
			holes += ext[i].ex_type == DM_EXTENT_HOLE;
		}
		MUST(dm_respond_event(sid, tok, DM_RESP_CONTINUE, 0, 0, NULL));
		printf("MIGRATED ino=%llu size=%lld exact=%d resident=%d holes=%d\n", (unsigned long long)ino,
		       (long long)st.dt_size, exact, resident, holes);
	}
	printf("READY\n");
	fflush(stdout);

	/* Recall at the first read event. */
	for (;;) {
		dm_eventmsg_t *m;
		dm_data_event_t *de;
		void *eh;
		size_t ehl;
		char where[4096];
		dm_boolean_t exact;
		int fd;

		if (dm_get_events(sid, 1, DM_EV_WAIT, sizeof buf, buf, &rlen)) {
			if (errno == EINTR)
				continue;
			printf("FAILED dm_get_events errno=%d\n", errno), exit(1);
		}
		m = (dm_eventmsg_t *)buf;
		if (m->ev_type != DM_EVENT_READ) {
			/* Not ours to manage: let it through. */
			MUST(dm_respond_event(sid, m->ev_token, DM_RESP_CONTINUE, 0, 0, NULL));
			continue;
		}
		de = DM_GET_VALUE(m, ev_data, dm_data_event_t *);
		eh = DM_GET_VALUE(de, de_handle, void *);
		ehl = DM_GET_LEN(de, de_handle);
		MUST(dm_request_right(sid, eh, ehl, m->ev_token, DM_RR_WAIT, DM_RIGHT_EXCL));
		MUST(dm_get_dmattr(sid, eh, ehl, m->ev_token, &loc, sizeof where, where, &rlen));
		fd = open(where, O_RDONLY);
		got = fd < 0 ? -1 : read(fd, data, sizeof data);
		if (got < 0)
			printf("FAILED reading the tier copy %s errno=%d\n", where, errno), exit(1);
		close(fd);
		if (dm_write_invis(sid, eh, ehl, m->ev_token, DM_WRITE_SYNC, 0, got, data) != got)
			printf("FAILED dm_write_invis errno=%d\n", errno), exit(1);
		MUST(dm_set_region(sid, eh, ehl, m->ev_token, 0, NULL, &exact));
		MUST(dm_remove_dmattr(sid, eh, ehl, m->ev_token, 0, &loc));
		MUST(dm_respond_event(sid, m->ev_token, DM_RESP_CONTINUE, 0, 0, NULL));
		printf("RECALLED node=%u offset=%lld bytes=%lld from=%s\n", DM_EV_NODEID(m), (long long)de->de_offset,
		       (long long)got, where);
		fflush(stdout);
		break;
	}

	/* The test reads again: no region, no event. */
	{
		char line[64];
		if (!fgets(line, sizeof line, stdin))
			return 3;
		printf("AFTER none=%d attr=%d\n", ERRNO(dm_get_events(sid, 8, 0, sizeof buf, buf, &rlen)),
		       ERRNO(dm_get_dmattr(sid, h, hlen, DM_NO_TOKEN, &loc, sizeof buf, buf, &rlen)));
	}
	MUST(dm_destroy_session(sid));
	printf("DONE\n");
	return 0;
}
