/*
 * XDSM file functions from C, against a real node daemon and mount
 * (argv[1]: a directory on the node's Tidepool mount holding one regular
 * file "f" of argv[2] bytes): handles, attributes, DM attributes and their
 * bulk scan, regions, holes, configuration, sessions and dispositions. It
 * prints KEY=value lines; the test checks them against what the mount and
 * the Rust side say. Exits non-zero at the first call that fails unexpectedly.
 */
#include <dmapi.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MUST(call) do { if ((call) != 0) { printf("FAILED %s errno=%d (%s)\n", #call, errno, strerror(errno)); exit(1); } } while (0)

int main(int argc, char **argv)
{
	char *ver, path[4096];
	dm_sessid_t sid;
	void *fsh, *h, *h2;
	size_t fshlen, hlen, h2len, rlen;
	static char buf[1 << 16];
	dm_token_t tok;

	if (argc != 3)
		return 2;
	snprintf(path, sizeof path, "%s/f", argv[1]);
	MUST(dm_init_service(&ver));
	MUST(dm_create_session(DM_NO_SESSION, "c-calls", &sid));
	MUST(dm_path_to_fshandle(argv[1], &fsh, &fshlen));
	MUST(dm_path_to_handle(path, &h, &hlen));
	{
		/* Destroy events to this session, for the object references below. */
		dm_eventset_t set;
		DMEV_ZERO(set);
		DMEV_SET(DM_EVENT_DESTROY, set);
		MUST(dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
		MUST(dm_set_eventlist(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
	}

	/* A forked child gets a connection of its own: its calls and the
	   parent's do not mix. */
	{
		pid_t kid;
		int status, bad = 0;
		char info[64];
		dm_sessid_t sids[64];
		unsigned int n;

		/* Both sides call at once, different calls: on one shared socket
		   answers would cross. */
		MUST(dm_query_session(sid, sizeof info, info, &rlen));
		kid = fork();
		if (kid == 0) {
			for (int i = 0; i < 500; i++)
				if (dm_query_session(sid, sizeof info, info, &rlen) != 0 || strcmp(info, "c-calls"))
					_exit(1);
			_exit(0);
		}
		for (int i = 0; i < 500; i++)
			bad += dm_getall_sessions(64, sids, &n) != 0;
		waitpid(kid, &status, 0);
		printf("FORK child=%d parent_bad=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, bad);
	}

	/* Handles: the pieces, made again, compared, hashed. */
	{
		dm_fsid_t fsid;
		dm_ino_t ino;
		dm_igen_t igen;
		void *fsh2;
		size_t fsh2len;

		MUST(dm_handle_to_fsid(h, hlen, &fsid));
		MUST(dm_handle_to_ino(h, hlen, &ino));
		MUST(dm_handle_to_igen(h, hlen, &igen));
		MUST(dm_make_handle(&fsid, &ino, &igen, &h2, &h2len));
		MUST(dm_handle_to_fshandle(h, hlen, &fsh2, &fsh2len));
		printf("HANDLE fsid=%llu ino=%llu same=%d fs_same=%d hash_same=%d valid=%u global_valid=%u junk_valid=%u\n",
		       (unsigned long long)fsid, (unsigned long long)ino, dm_handle_cmp(h, hlen, h2, h2len) == 0,
		       dm_handle_cmp(fsh, fshlen, fsh2, fsh2len) == 0,
		       dm_handle_hash(h, hlen) == dm_handle_hash(h2, h2len), dm_handle_is_valid(h, hlen),
		       dm_handle_is_valid(DM_GLOBAL_HANP, DM_GLOBAL_HLEN), dm_handle_is_valid("junk", 4));
		dm_handle_free(fsh2, fsh2len);
		dm_handle_free(h2, h2len);
	}

	/* Attributes. */
	{
		dm_stat_t st;
		MUST(dm_get_fileattr(sid, h, hlen, DM_NO_TOKEN, DM_AT_STAT, &st));
		printf("STAT ino=%llu size=%lld mode=%o nlink=%d igen_set=%d\n", (unsigned long long)st.dt_ino,
		       (long long)st.dt_size, st.dt_mode & 07777, st.dt_nlink, st.dt_xfs_igen != 0 || 1);
	}

	/* Work of our own under a user event's token: DM attributes, regions, a hole. */
	MUST(dm_create_userevent(sid, 4, "work", &tok));
	MUST(dm_request_right(sid, h, hlen, tok, DM_RR_WAIT, DM_RIGHT_EXCL));
	{
		dm_attrname_t a = { "hsm" }, b = { "tier" };
		dm_region_t rg[2] = { { 0, 4096, DM_REGION_READ, 0 }, { 8192, 0, DM_REGION_WRITE, 0 } }, back[4];
		dm_boolean_t exact;
		unsigned int n;
		dm_off_t roff;
		dm_size_t rl;
		int nattrs = 0, short_errno;
		size_t need;

		MUST(dm_set_dmattr(sid, h, hlen, tok, &a, 0, 5, "obj-1"));
		MUST(dm_set_dmattr(sid, h, hlen, tok, &b, 0, 2, "s3"));
		short_errno = dm_get_dmattr(sid, h, hlen, tok, &a, 2, buf, &need) == 0 ? 0 : errno;
		MUST(dm_get_dmattr(sid, h, hlen, tok, &a, sizeof buf, buf, &rlen));
		printf("DMATTR value=%.*s short=%d need=%zu\n", (int)rlen, buf, short_errno, need);
		MUST(dm_getall_dmattr(sid, h, hlen, tok, sizeof buf, buf, &rlen));
		for (dm_attrlist_t *al = (dm_attrlist_t *)buf; al; al = DM_STEP_TO_NEXT(al, dm_attrlist_t *)) {
			printf("ATTR name=%.8s value=%.*s\n", (char *)al->al_name.an_chars, (int)DM_GET_LEN(al, al_data),
			       DM_GET_VALUE(al, al_data, char *));
			nattrs++;
		}
		printf("ATTRS n=%d\n", nattrs);
		MUST(dm_set_region(sid, h, hlen, tok, 2, rg, &exact));
		MUST(dm_get_region(sid, h, hlen, tok, 4, back, &n));
		printf("REGIONS n=%u exact=%u r0=%lld/%llu/%u r1=%lld/%llu/%u\n", n, exact, (long long)back[0].rg_offset,
		       (unsigned long long)back[0].rg_size, back[0].rg_flags, (long long)back[1].rg_offset,
		       (unsigned long long)back[1].rg_size, back[1].rg_flags);
		printf("REGIONS_SHORT errno=%d n=%u\n", dm_get_region(sid, h, hlen, tok, 1, back, &n) == 0 ? 0 : errno, n);
		MUST(dm_set_region(sid, h, hlen, tok, 0, NULL, &exact));
		MUST(dm_probe_hole(sid, h, hlen, tok, 100, 10000, &roff, &rl));
		MUST(dm_punch_hole(sid, h, hlen, tok, roff, rl));
		{
			dm_off_t off = 0;
			dm_extent_t ex[16];
			MUST(dm_get_allocinfo(sid, h, hlen, tok, &off, 16, ex, &n));
			printf("HOLE probe=%lld/%llu extents=%u", (long long)roff, (unsigned long long)rl, n);
			for (unsigned int i = 0; i < n; i++)
				printf(" %d:%lld+%llu", (int)ex[i].ex_type, (long long)ex[i].ex_offset,
				       (unsigned long long)ex[i].ex_length);
			printf("\n");
		}
		MUST(dm_remove_dmattr(sid, h, hlen, tok, 0, &b));
	}
	/* Answering the user event gives its right back. */
	MUST(dm_respond_event(sid, tok, DM_RESP_CONTINUE, 0, 0, NULL));
	{
		dm_right_t r;
		int e = dm_query_right(sid, h, hlen, tok, &r) == 0 ? 0 : errno;
		printf("AFTER_RESPOND query_errno=%d notoken_request_errno=%d\n", e,
		       dm_request_right(sid, h, hlen, DM_NO_TOKEN, 0, DM_RIGHT_SHARED) == 0 ? 0 : errno);
	}

	/* Bulk scans: every file, with its "hsm" attribute for bulkall. */
	{
		dm_attrloc_t loc;
		dm_attrname_t a = { "hsm" };
		int files = 0, with_attr = 0, more;
		size_t small_need = 0;

		MUST(dm_init_attrloc(sid, fsh, fshlen, DM_NO_TOKEN, &loc));
		do {
			more = dm_get_bulkattr(sid, fsh, fshlen, DM_NO_TOKEN, DM_AT_STAT, &loc, sizeof buf, buf, &rlen);
			if (more < 0) {
				printf("FAILED dm_get_bulkattr errno=%d\n", errno);
				return 1;
			}
			if (rlen)
				for (dm_stat_t *s = (dm_stat_t *)buf; s; s = DM_STEP_TO_NEXT(s, dm_stat_t *))
					files++;
		} while (more == 1);
		MUST(dm_init_attrloc(sid, fsh, fshlen, DM_NO_TOKEN, &loc));
		do {
			more = dm_get_bulkall(sid, fsh, fshlen, DM_NO_TOKEN, DM_AT_STAT, &a, &loc, sizeof buf, buf, &rlen);
			if (more < 0) {
				printf("FAILED dm_get_bulkall errno=%d\n", errno);
				return 1;
			}
			if (rlen)
				for (dm_xstat_t *x = (dm_xstat_t *)buf; x; x = DM_STEP_TO_NEXT(&x->dx_statinfo, dm_xstat_t *))
					if (DM_GET_LEN(x, dx_attrdata) == 5 &&
					    !memcmp(DM_GET_VALUE(x, dx_attrdata, char *), "obj-1", 5))
						with_attr++;
		} while (more == 1);
		MUST(dm_init_attrloc(sid, fsh, fshlen, DM_NO_TOKEN, &loc));
		int e = dm_get_bulkattr(sid, fsh, fshlen, DM_NO_TOKEN, DM_AT_STAT, &loc, 16, buf, &small_need) < 0 ? errno : 0;
		printf("BULK files=%d with_attr=%d short_errno=%d need_ok=%d\n", files, with_attr, e,
		       small_need >= sizeof(dm_stat_t));
	}

	/* Configuration. */
	{
		dm_size_t v[20];
		dm_eventset_t evs;
		unsigned int n;
		for (int i = 1; i < 20; i++)
			MUST(dm_get_config(fsh, fshlen, (dm_config_t)i, &v[i]));
		MUST(dm_get_config_events(fsh, fshlen, DM_EVENT_MAX, &evs, &n));
		printf("CONFIG max_attr=%llu total_attr=%llu regions=%llu handle=%llu msg=%llu obj_ref=%llu punch=%llu "
		       "events=%llx n=%u bad=%d\n",
		       (unsigned long long)v[DM_CONFIG_MAX_ATTRIBUTE_SIZE], (unsigned long long)v[DM_CONFIG_TOTAL_ATTRIBUTE_SPACE],
		       (unsigned long long)v[DM_CONFIG_MAX_MANAGED_REGIONS], (unsigned long long)v[DM_CONFIG_MAX_HANDLE_SIZE],
		       (unsigned long long)v[DM_CONFIG_MAX_MESSAGE_DATA], (unsigned long long)v[DM_CONFIG_OBJ_REF],
		       (unsigned long long)v[DM_CONFIG_PUNCH_HOLE], (unsigned long long)evs, n,
		       dm_get_config(fsh, fshlen, (dm_config_t)99, &v[0]) == 0 ? 0 : errno);
	}

	/* Sessions and dispositions. */
	{
		dm_sessid_t sids[64];
		unsigned int n;
		dm_eventset_t set;
		int disp = 0, found = 0;
		MUST(dm_getall_sessions(64, sids, &n));
		for (unsigned int i = 0; i < n; i++)
			found += sids[i] == sid;
		DMEV_ZERO(set);
		DMEV_SET(DM_EVENT_POSTCREATE, set);
		DMEV_SET(DM_EVENT_DESTROY, set);
		MUST(dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
		/* The node's copy of the table follows the session manager's shortly
		   after dm_set_disp returns (Tidepool: distributed by the file
		   system's manager), so look for up to 5 s. */
		for (int tries = 0; tries < 500 && !disp; tries++) {
			MUST(dm_getall_disp(sid, sizeof buf, buf, &rlen));
			for (dm_dispinfo_t *d = (dm_dispinfo_t *)buf; rlen && d; d = DM_STEP_TO_NEXT(d, dm_dispinfo_t *))
				if (dm_handle_cmp(DM_GET_VALUE(d, di_fshandle, void *), DM_GET_LEN(d, di_fshandle), fsh,
						  fshlen) == 0 &&
				    DMEV_ISSET(DM_EVENT_POSTCREATE, d->di_eventset))
					disp++;
			if (!disp)
				usleep(10000);
		}
		DMEV_ZERO(set);
		DMEV_SET(DM_EVENT_DESTROY, set);
		MUST(dm_set_disp(sid, fsh, fshlen, DM_NO_TOKEN, &set, DM_EVENT_MAX));
		printf("SESSIONS found=%d disp=%d short_errno=%d\n", found, disp,
		       dm_getall_sessions(0, sids, &n) == 0 ? 0 : errno);
	}

	/* Object references: the file outlives its last name while one is held;
	   releasing it destroys the file, and the destroy event comes here. */
	{
		dm_token_t t2;
		char line[64], peek[4];
		dm_ssize_t got;
		int again, q_notoken;

		MUST(dm_create_userevent(sid, 3, "ref", &t2));
		MUST(dm_obj_ref_hold(sid, t2, h, hlen));
		again = dm_obj_ref_hold(sid, t2, h, hlen) == 0 ? 0 : errno;
		q_notoken = dm_obj_ref_query(sid, DM_NO_TOKEN, h, hlen) < 0 ? errno : 0;
		printf("HELD query=%d again=%d notoken=%d\n", dm_obj_ref_query(sid, t2, h, hlen), again, q_notoken);
		fflush(stdout);
		/* The test unlinks the file on the mount, then says so. */
		if (!fgets(line, sizeof line, stdin))
			return 1;
		got = dm_read_invis(sid, h, hlen, DM_NO_TOKEN, 0, sizeof peek, peek);
		MUST(dm_obj_ref_rele(sid, t2, h, hlen));
		/* The last reference went with the last name: the object is gone,
		   its handle names nothing (EBADF). */
		{
			int q = dm_obj_ref_query(sid, t2, h, hlen) < 0 ? errno : 0;
			int r = dm_obj_ref_rele(sid, t2, h, hlen) == 0 ? 0 : errno;
			printf("UNLINKED read=%lld query_errno=%d rele_again=%d\n", (long long)got, q, r);
		}
		fflush(stdout);
		for (;;) {
			dm_eventmsg_t *m;
			MUST(dm_get_events(sid, 16, DM_EV_WAIT, sizeof buf, buf, &rlen));
			for (m = (dm_eventmsg_t *)buf; m; m = DM_STEP_TO_NEXT(m, dm_eventmsg_t *)) {
				if (m->ev_type == DM_EVENT_DESTROY) {
					dm_destroy_event_t *de = DM_GET_VALUE(m, ev_data, dm_destroy_event_t *);
					dm_ino_t ino;
					MUST(dm_handle_to_ino(DM_GET_VALUE(de, ds_handle, void *), DM_GET_LEN(de, ds_handle), &ino));
					printf("DESTROY ino=%llu\n", (unsigned long long)ino);
					goto destroyed;
				}
			}
		}
destroyed:
		MUST(dm_respond_event(sid, t2, DM_RESP_CONTINUE, 0, 0, NULL));
	}
	dm_handle_free(h, hlen);
	dm_handle_free(fsh, fshlen);
	MUST(dm_destroy_session(sid));
	printf("DONE\n");
	return 0;
}
