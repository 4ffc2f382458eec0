SELECT topic() AS t, topic(2) AS dev, topic(9) AS none, clientid() AS c, qos() AS q, timestamp() AS ts, now() AS n, user_property('unit') AS u, user_property('missing') AS m FROM "devices/#"
