SELECT md5(s) AS m, sha1(s) AS s1, sha256(s) AS s256, crc32(s) AS c, base64_encode(s) AS b64, base64_decode('aGk=') AS raw, hex(s) AS hx, payload() AS p, CAST(payload() AS STRING) AS ps FROM "#"
